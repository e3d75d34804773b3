"""``agentic-fast demo``: one complete simulated phone call on loopback (see :mod:`.run`).

The parts besides the real server are demo stand-ins, kept small: the caller and Twilio
(:mod:`.caller`), the voice model (:mod:`.model`, OpenAI Realtime), the OpenClaw agent
(:mod:`.agent`), the audio (:mod:`.voice`) and the printed :mod:`.timeline`. They are not
the test fakes (``tests/fakes``), which validate far more.
"""
