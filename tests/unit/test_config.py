"""Config loading: ${VAR} expansion, validation with key paths and lines, masking, URLs."""

from __future__ import annotations

import dataclasses
from datetime import date
from pathlib import Path
from textwrap import dedent

import pytest

from agentic_fast.core.config import (
    MEDIA_STREAM_PATH,
    Config,
    ServerConfig,
    VadConfig,
    mask_secret,
)
from agentic_fast.core.errors import ConfigError

REPO_CONFIG = Path(__file__).resolve().parents[2] / "config.yaml"
SID = "AC" + "0123456789abcdef" * 2


def load(text: str, env: dict[str, str] | None = None) -> Config:
    return Config.from_text(dedent(text), source="test.yaml", env=env or {})


def load_error(text: str, env: dict[str, str] | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load(text, env)
    return info.value


# -- defaults and files ---------------------------------------------------------------------------

def test_empty_text_gives_defaults():
    config = load("")
    assert config == Config()
    assert config.server.host == "127.0.0.1"
    assert config.server.port == 8080
    assert config.server.start_timeout_s == 5.0
    assert config.server.stream_token_ttl_s == 60.0
    assert config.gateway.url == "ws://127.0.0.1:18789"
    assert config.audio.handoff_ms == 20
    assert config.openai_realtime.model == "gpt-realtime-2.1"
    assert config.openai_realtime.transcription_model == "gpt-transcribe"
    assert config.gemini.model == "gemini-3.8-live"
    assert config.brain.classifier.model == "gpt-6-luna"
    assert config.gemini.url.startswith("wss://generativelanguage.googleapis.com/ws/")
    assert config.gemini.url.endswith("BidiGenerateContent")


def test_null_section_and_null_value_take_defaults():
    config = load("""
        gemini:
        server:
          port:
    """)
    assert config.gemini == Config().gemini
    assert config.server.port == 8080


def test_repo_config_yaml_loads_without_any_env():
    config = Config.load(REPO_CONFIG, env={})
    assert config.twilio.auth_token == ""
    assert config.openai_realtime.api_key == ""
    assert config.gateway.token == ""
    assert config.brain.allowed_callers == ()


def test_repo_config_yaml_takes_secrets_from_env():
    env = {"TWILIO_ACCOUNT_SID": SID, "TWILIO_AUTH_TOKEN": "tok", "OPENAI_API_KEY": "sk-1",
           "PUBLIC_URL": "https://agent.example.com/", "AGENTIC_FAST_PORT": "9000"}
    config = Config.load(REPO_CONFIG, env=env)
    assert config.twilio.account_sid == SID
    assert config.twilio.auth_token == "tok"
    assert config.openai_realtime.api_key == "sk-1"
    assert config.brain.classifier.api_key == "sk-1"
    assert config.server.port == 9000
    assert config.server.stream_url == "wss://agent.example.com" + MEDIA_STREAM_PATH


def test_load_reads_a_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("server:\n  port: 7000\n")
    assert Config.load(path, env={}).server.port == 7000


def test_load_missing_file_is_a_config_error(tmp_path):
    path = tmp_path / "absent.yaml"
    with pytest.raises(ConfigError) as info:
        Config.load(path, env={})
    assert info.value.source == str(path)
    assert "cannot read config file" in str(info.value)


def test_config_is_frozen():
    config = load("")
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.server.port = 1  # type: ignore[misc]


# -- ${VAR} expansion -----------------------------------------------------------------------------

def test_expansion_plain_default_and_partial():
    config = load("""
        twilio:
          auth_token: ${TOKEN}
          account_sid: ${SID:AC0123456789abcdef0123456789abcdef}
        server:
          public_url: https://${HOST}:${PORT:8443}/agent
    """, env={"TOKEN": "secret-value", "HOST": "agent.example.com"})
    assert config.twilio.auth_token == "secret-value"
    assert config.twilio.account_sid == SID
    assert config.server.public_url == "https://agent.example.com:8443/agent"


def test_default_applies_to_empty_variable():
    assert load("server: {host: '${H:0.0.0.0}'}", env={"H": ""}).server.host == "0.0.0.0"


def test_empty_variable_without_default_is_empty_string():
    assert load("twilio: {auth_token: '${T}'}", env={"T": ""}).twilio.auth_token == ""


def test_default_may_contain_colons():
    config = load("gateway:\n  url: ${GW:ws://10.0.0.1:18789}\n")
    assert config.gateway.url == "ws://10.0.0.1:18789"


def test_dollar_dollar_is_a_literal_and_env_values_are_not_reexpanded():
    config = load("""
        openai_realtime:
          instructions: "Say $${NAME} and $5."
          greeting: ${G}
    """, env={"G": "${NOT_EXPANDED}"})
    assert config.openai_realtime.instructions == "Say ${NAME} and $5."
    assert config.openai_realtime.greeting == "${NOT_EXPANDED}"


def test_missing_variable_names_variable_key_and_line():
    err = load_error("""
        server:
          port: 8080
        twilio:
          auth_token: ${TWILIO_AUTH_TOKEN}
    """)
    assert err.key == "twilio.auth_token"
    assert err.line == 5
    assert err.source == "test.yaml"
    assert "TWILIO_AUTH_TOKEN" in str(err)
    assert str(err).startswith("test.yaml:5: twilio.auth_token:")


def test_malformed_reference_is_an_error():
    err = load_error("server:\n  host: ${1BAD}\n")
    assert err.key == "server.host"
    assert err.line == 2
    assert "malformed" in str(err)


def test_expanded_strings_convert_to_numbers():
    config = load("""
        server:
          port: ${PORT:8080}
          drain_timeout_s: ${DRAIN}
    """, env={"PORT": "9001", "DRAIN": "2.5"})
    assert config.server.port == 9001
    assert config.server.drain_timeout_s == 2.5


def test_expanded_non_number_is_a_type_error():
    err = load_error("server:\n  port: ${PORT}\n", env={"PORT": "http"})
    assert (err.key, err.line) == ("server.port", 2)
    assert "expected an integer" in str(err)


def test_list_from_comma_separated_variable():
    config = load("brain:\n  allowed_callers: ${CALLERS}\n",
                  env={"CALLERS": "+15551230000, +442071234567,"})
    assert config.brain.allowed_callers == ("+15551230000", "+442071234567")


# -- types, unknown keys, ranges ------------------------------------------------------------------

@pytest.mark.parametrize(("text", "key", "line", "fragment"), [
    ("server:\n  host: x\n  port: eighty\n", "server.port", 3, "expected an integer"),
    ("server:\n  port: 1.5\n", "server.port", 2, "expected an integer"),
    ("server:\n  port: true\n", "server.port", 2, "expected an integer"),
    ("server:\n  host: [a, b]\n", "server.host", 2, "expected a string, got a list"),
    ("brain:\n  pin: 1234\n", "brain.pin", 2, "quote it"),
    ("server: 5\n", "server", 1, "expected a mapping"),
    ("brain:\n  allowed_callers: {a: 1}\n", "brain.allowed_callers", 2, "list of strings"),
    ("brain:\n  deadline_s: nope\n", "brain.deadline_s", 2, "expected a number"),
])
def test_type_errors_name_key_and_line(text, key, line, fragment):
    err = load_error(text)
    assert (err.key, err.line) == (key, line)
    assert fragment in str(err)
    assert str(err).startswith(f"test.yaml:{line}: ")


def test_integers_are_accepted_for_float_settings():
    assert load("brain:\n  deadline_s: 10\n").brain.deadline_s == 10.0


def test_unknown_key_suggests_the_near_name():
    err = load_error("""
        server:
          host: 0.0.0.0
          prot: 80
    """)
    assert (err.key, err.line) == ("server.prot", 4)
    assert "unknown key" in str(err)
    assert "'port'" in str(err)


def test_unknown_top_level_section():
    err = load_error("openai:\n  model: x\n")
    assert (err.key, err.line) == ("openai", 1)
    assert "openai_realtime" in str(err)


def test_duplicate_key_is_an_error():
    err = load_error("server:\n  port: 1\n  port: 2\n")
    assert (err.key, err.line) == ("server.port", 3)
    assert "line 2" in str(err)


@pytest.mark.parametrize(("text", "key", "line"), [
    ("audio:\n  handoff_ms: 10\n", "audio.handoff_ms", 2),
    ("audio:\n  handoff_ms: 101\n", "audio.handoff_ms", 2),
    ("server:\n  port: 65536\n", "server.port", 2),
    ("server:\n  start_timeout_s: 0\n", "server.start_timeout_s", 2),
    ("openai_realtime:\n  vad:\n    threshold: 1.5\n", "openai_realtime.vad.threshold", 3),
    ("brain:\n  deadline_s: .nan\n", "brain.deadline_s", 2),
    ("calls:\n  max_concurrent_calls: 0\n", "calls.max_concurrent_calls", 2),
])
def test_out_of_range_values(text, key, line):
    err = load_error(text)
    assert (err.key, err.line) == (key, line)


def test_range_bounds_are_inclusive():
    assert load("audio:\n  handoff_ms: 20\n").audio.handoff_ms == 20
    assert load("audio:\n  handoff_ms: 100\n").audio.handoff_ms == 100


@pytest.mark.parametrize(("text", "key"), [
    ("brain:\n  mode: sometimes\n", "brain.mode"),
    ("gateway:\n  session_scope: global\n", "gateway.session_scope"),
    ("audio:\n  provider: azure\n", "audio.provider"),
    ("openai_realtime:\n  audio_format: g711\n", "openai_realtime.audio_format"),
    ("logging:\n  format: xml\n", "logging.format"),
    ("logging:\n  level: verbose\n", "logging.level"),
    ("brain:\n  classifier:\n    provider: anthropic\n", "brain.classifier.provider"),
    ("brain:\n  pin: '12'\n", "brain.pin"),
    ("twilio:\n  account_sid: ACxyz\n", "twilio.account_sid"),
])
def test_invalid_choices_and_formats(text, key):
    assert load_error(text).key == key


def test_log_level_is_normalised():
    assert load("logging:\n  level: debug\n").logging.level == "DEBUG"


def test_bad_e164_numbers_name_the_item_and_its_line():
    err = load_error("""
        brain:
          allowed_callers:
            - "+15551230000"
            - "5551230000"
    """)
    assert (err.key, err.line) == ("brain.allowed_callers[1]", 5)
    assert "E.164" in str(err)
    assert load_error("twilio:\n  from_number: '+0123'\n").key == "twilio.from_number"


def test_valid_e164_numbers_and_empty_from_number():
    config = load("brain:\n  allowed_callers: ['+15551230000']\ntwilio:\n  from_number: ''\n")
    assert config.brain.allowed_callers == ("+15551230000",)
    assert config.twilio.from_number == ""


def test_audio_format_follows_provider():
    assert load("").openai_realtime.audio_format == "pcm16"
    pcmu = load("audio:\n  provider: openai-pcmu\n")
    assert pcmu.openai_realtime.audio_format == "pcmu"


def test_audio_format_contradicting_provider_is_an_error_at_its_line():
    err = load_error("""
        audio:
          provider: openai-pcmu
        openai_realtime:
          audio_format: pcm16
    """)
    assert (err.key, err.line) == ("openai_realtime.audio_format", 5)


def test_filler_must_come_before_deadline():
    err = load_error("brain:\n  deadline_s: 5\n  filler_after_s: 5\n")
    assert (err.key, err.line) == ("brain.filler_after_s", 3)


def test_cross_check_on_a_default_value_points_at_the_enclosing_section():
    err = load_error("server:\n  port: 1\nbrain:\n  deadline_s: 1\n")
    assert (err.key, err.line) == ("brain.filler_after_s", 3)


def test_classifier_defaults_follow_provider():
    openai = load("").brain.classifier
    gemini = load("brain:\n  classifier:\n    provider: gemini\n").brain.classifier
    assert openai.base_url == "https://api.openai.com/v1"
    assert "generativelanguage.googleapis.com" in gemini.base_url
    assert gemini.model.startswith("gemini")
    custom = load("brain:\n  classifier:\n    base_url: http://127.0.0.1:9999/v1/\n"
                  "    model: tiny\n").brain.classifier
    assert (custom.base_url, custom.model) == ("http://127.0.0.1:9999/v1", "tiny")


def test_sections_validate_when_built_directly():
    with pytest.raises(ConfigError) as info:
        ServerConfig(port=-1)
    assert info.value.key == "server.port"
    with pytest.raises(ConfigError):
        VadConfig(threshold=2.0)


# -- invalid YAML ---------------------------------------------------------------------------------

def test_invalid_yaml_reports_line():
    err = load_error("server:\n port: 1\n  host: x\n")
    assert err.line == 3
    assert "invalid YAML" in str(err)
    assert "\n" not in str(err)


def test_unclosed_flow_list_is_invalid_yaml():
    err = load_error("server:\n  host: [a,\n")
    assert "invalid YAML" in str(err)
    assert err.line is not None


def test_control_character_is_invalid_yaml_with_line():
    err = load_error("server:\n  host: a\x00b\n")
    assert err.line == 2


def test_top_level_must_be_a_mapping():
    err = load_error("- server\n")
    assert err.line == 1


def test_unsafe_tags_are_rejected():
    err = load_error("server:\n  host: !!python/name:os.system\n")
    assert (err.key, err.line) == ("server.host", 2)


def test_merge_keys_work():
    config = load("""
        gemini: &model
          voice: Kore
        server:
          <<: {port: 9100}
          host: 0.0.0.0
    """)
    assert config.server.port == 9100
    assert config.gemini.voice == "Kore"


def test_own_keys_override_merged_keys():
    config = load("""
        server:
          <<: {port: 9100, host: 0.0.0.0}
          port: 9200
    """)
    assert (config.server.port, config.server.host) == (9200, "0.0.0.0")


def test_errors_on_secret_values_do_not_echo_them():
    assert "98765" not in str(load_error("twilio:\n  auth_token: 98765\n"))
    assert "99" not in str(load_error("brain:\n  pin: '99'\n"))


# -- twilio.webhook_shared_keys -------------------------------------------------------------------

def test_webhook_shared_keys_from_a_list_or_the_environment():
    config = load("""
        twilio:
          webhook_shared_keys: ["webhooks_sharedkey_a=s3cr=t", " k2 = x "]
    """)
    assert config.twilio.shared_keys == {"webhooks_sharedkey_a": "s3cr=t", "k2": "x"}
    assert load("").twilio.shared_keys == {}
    env = {"TWILIO_WEBHOOK_SHARED_KEYS": "webhooks_sharedkey_1=abc,webhooks_sharedkey_2=def"}
    repo = Config.load(REPO_CONFIG, env=env)
    assert repo.twilio.shared_keys == {"webhooks_sharedkey_1": "abc",
                                       "webhooks_sharedkey_2": "def"}
    assert Config.load(REPO_CONFIG, env={}).twilio.shared_keys == {}


@pytest.mark.parametrize("entries", [
    '["webhooks_sharedkey_a"]', '["webhooks_sharedkey_a="]', '["=secret-98765"]',
    '["a b=secret-98765"]', '["k=secret-98765", "k=secret-98765"]',
])
def test_bad_webhook_shared_keys_name_the_key_and_hide_the_secret(entries: str):
    error = load_error(f"twilio:\n  webhook_shared_keys: {entries}\n")
    assert error.key == "twilio.webhook_shared_keys"
    assert "98765" not in str(error)


def test_webhook_shared_keys_are_masked():
    config = load("""
        twilio: {webhook_shared_keys: ["webhooks_sharedkey_a=very-secret-0001"]}
    """)
    masked = config.masked()["twilio"]["webhook_shared_keys"]
    assert masked == ["****0001"] and "very-secret" not in repr(config.masked())


# -- masking --------------------------------------------------------------------------------------

def test_mask_secret():
    assert mask_secret("") == "(unset)"
    assert mask_secret("sk-proj-0123456789abcd") == "****abcd"
    assert mask_secret("short") == "****"


def test_masked_hides_every_secret():
    secrets = {"TT": "twilio-token-0001", "OK": "sk-openai-key-0002", "GK": "gemini-key-000003",
               "GW": "gateway-token-0004", "API": "api-bearer-token-0005", "PIN": "4321"}
    config = load("""
        server: {api_token: "${API}"}
        twilio: {auth_token: "${TT}"}
        openai_realtime: {api_key: "${OK}"}
        gemini: {api_key: "${GK}"}
        gateway: {token: "${GW}"}
        brain:
          pin: "${PIN}"
          classifier: {api_key: "${OK}"}
    """, env=secrets)
    masked = config.masked()
    flat = repr(masked)
    for value in secrets.values():
        assert value not in flat
    assert masked["twilio"]["auth_token"] == "****0001"
    assert masked["server"]["api_token"] == "****0005"
    assert masked["brain"]["pin"] == "****"
    assert masked["gemini"]["api_key"] == "****0003"
    assert masked["gateway"]["token"] == "****0004"
    assert masked["brain"]["classifier"]["api_key"] == "****0002"


def test_masked_is_plain_data_of_the_effective_config():
    masked = load("brain:\n  allowed_callers: ['+15551230000']\n").masked()
    assert masked["brain"]["allowed_callers"] == ["+15551230000"]
    assert masked["openai_realtime"]["vad"]["silence_duration_ms"] == 500
    assert masked["openai_realtime"]["audio_format"] == "pcm16"
    assert masked["twilio"]["auth_token"] == "(unset)"
    assert list(masked) == ["server", "carrier", "numbers", "twilio", "telnyx",
                            "openai_realtime", "gemini", "gateway", "brain", "audio", "bridge",
                            "calls", "logging", "store", "notify", "metrics"]
    assert masked["carrier"] == "twilio" and masked["telnyx"]["api_key"] == "(unset)"


# -- model warnings -------------------------------------------------------------------------------

TODAY = date(2026, 12, 5)


def test_default_models_are_current_for_every_provider():
    for text in ("brain: {mode: both}",
                 "audio: {provider: gemini}\nbrain: {mode: both, classifier: {provider: gemini}}",
                 "audio: {provider: openai-pcmu}\nbrain: {mode: transcript}"):
        assert load(text).model_warnings(TODAY) == [], text
    assert Config.load(REPO_CONFIG, env={}).model_warnings(TODAY) == []


@pytest.mark.parametrize(("text", "key", "says"), [
    ("openai_realtime: {model: gpt-realtime}", "openai_realtime.model",
     "gpt-realtime is deprecated and shuts down on 2027-01-20"),
    ("openai_realtime: {transcription_model: gpt-4o-mini-transcribe}",
     "openai_realtime.transcription_model",
     "gpt-4o-mini-transcribe is deprecated and shuts down on 2027-02-26"),
    ("brain: {mode: transcript, classifier: {model: gpt-4.1-mini}}", "brain.classifier.model",
     "gpt-4.1-mini is deprecated and shuts down on 2027-01-14"),
    ("brain: {mode: both, classifier: {model: o1-mini}}", "brain.classifier.model",
     "o1-mini was shut down on 2025-10-27: calls with it fail"),
    ("brain: {mode: both, classifier: {provider: gemini, model: gemini-2.5-flash}}",
     "brain.classifier.model", "gemini-2.5-flash was shut down on 2026-06-17"),
    ("audio: {provider: gemini}\ngemini: {model: gemini-2.5-flash-native-audio-preview-09-2025}",
     "gemini.model", "gemini-2.5-flash-native-audio-preview-09-2025 is a superseded preview"),
    ("audio: {provider: gemini}\ngemini: {model: models/gemini-live-2.5-flash-preview}",
     "gemini.model", "models/gemini-live-2.5-flash-preview was shut down on 2025-12-09"),
])
def test_deprecated_or_retired_model_is_warned_naming_the_key(text, key, says):
    warnings = load(text).model_warnings(TODAY)
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith(f"{key}: {says}")
    assert warnings[0] in load(text).warnings(TODAY)


def test_deprecated_model_turns_retired_on_its_shutdown_date():
    config = load("openai_realtime: {model: gpt-realtime-2025-08-28}")
    assert "is deprecated and shuts down on 2027-01-20" in config.model_warnings(TODAY)[0]
    after = config.model_warnings(date(2027, 1, 20))[0]
    assert "was shut down on 2027-01-20: calls with it fail" in after
    assert after.endswith("use a current model such as gpt-realtime-2.1")


def test_models_of_unused_parts_are_not_warned():
    old = """
        openai_realtime: {model: gpt-realtime, transcription_model: whisper-1}
        gemini: {model: gemini-2.0-flash-live-001}
        brain: {mode: tool, classifier: {model: gpt-4.1-mini}}
    """
    assert [w.split(":")[0] for w in load(old).model_warnings(TODAY)] == [
        "openai_realtime.model", "openai_realtime.transcription_model"]
    gemini = load(old.rstrip(" ") + "        audio: {provider: gemini}\n")
    assert [w.split(":")[0] for w in gemini.model_warnings(TODAY)] == ["gemini.model"]
    no_transcripts = load("openai_realtime: {transcription_model: ''}")
    assert no_transcripts.model_warnings(TODAY) == []


def test_warnings_list_missing_production_settings():
    assert any("public_url" in w for w in load("").warnings())
    full = load(f"""
        server: {{public_url: "https://a.example.com", host: 0.0.0.0, api_token: t,
                  state_dir: /var/lib/agentic-fast}}
        twilio: {{account_sid: {SID}, auth_token: t}}
        openai_realtime: {{api_key: k}}
        brain: {{allowed_callers: ['+15551230000']}}
    """)
    assert full.warnings() == []
    assert any(w.startswith("server.state_dir") for w in load("").warnings())


# -- URL helpers ----------------------------------------------------------------------------------

def test_public_url_normalised_and_stream_url_built():
    server = load("server:\n  public_url: ' https://agent.example.com/ '\n").server
    assert server.public_url == "https://agent.example.com"
    assert server.stream_url == "wss://agent.example.com/twilio/media-stream"
    assert server.webhook_url("/twilio/voice") == "https://agent.example.com/twilio/voice"
    assert server.webhook_url("twilio/status") == "https://agent.example.com/twilio/status"


def test_stream_url_keeps_port_and_path_prefix():
    server = load("server:\n  public_url: https://127.0.0.1:8443/agent/\n").server
    assert server.stream_url == "wss://127.0.0.1:8443/agent/twilio/media-stream"
    assert server.webhook_url("/x") == "https://127.0.0.1:8443/agent/x"


@pytest.mark.parametrize("url", ["http://agent.example.com", "http://127.0.0.1:8080/agent",
                                 "http://localhost"])
def test_http_public_url_is_refused_at_load(url):
    # Twilio only opens wss:// media streams; an http public URL would make every call's
    # TwiML invalid. The rule holds on loopback too: tests sign for an https public URL.
    err = load_error(f"server:\n  host: 127.0.0.1\n  public_url: {url}\n")
    assert (err.key, err.line) == ("server.public_url", 3)
    assert "https://" in str(err) and "wss://" in str(err) and repr(url) in str(err)


def test_url_helpers_refuse_without_public_url():
    server = load("").server
    with pytest.raises(ConfigError) as info:
        server.stream_url  # noqa: B018
    assert info.value.key == "server.public_url"
    with pytest.raises(ConfigError):
        server.webhook_url("/twilio/voice")


@pytest.mark.parametrize(("text", "key"), [
    ("server:\n  public_url: ftp://example.com\n", "server.public_url"),
    ("server:\n  public_url: example.com\n", "server.public_url"),
    ("server:\n  public_url: https://example.com/?a=1\n", "server.public_url"),
    ("server:\n  public_url: https://example.com:99999\n", "server.public_url"),
    ("gateway:\n  url: http://127.0.0.1:18789\n", "gateway.url"),
    ("openai_realtime:\n  url: https://api.openai.com/v1/realtime\n", "openai_realtime.url"),
    ("twilio:\n  api_base: wss://api.twilio.com\n", "twilio.api_base"),
])
def test_bad_urls(text, key):
    err = load_error(text)
    assert (err.key, err.line) == (key, 2)


def test_device_key_file_expands_home():
    config = load("gateway:\n  device_key_path: ~/k\n")
    assert config.gateway.device_key_file == Path("~/k").expanduser()


def test_bridge_section_booleans() -> None:
    cfg = Config.from_text("bridge:\n  prewarm: ${PREWARM:off}\n  lead_ms: 150\n", env={})
    assert cfg.bridge.prewarm is False and cfg.bridge.lead_ms == 150
    with pytest.raises(ConfigError, match=r"bridge\.prewarm.*true or false"):
        Config.from_text("bridge:\n  prewarm: 3\n", env={})


# -- inbound policy (calls.inbound) ---------------------------------------------------------------

EMPTY_ALLOW_LIST = "calls.inbound_numbers is empty"


def test_inbound_defaults_to_the_allow_list_of_the_brains_callers():
    assert load("").calls.inbound == "allowlist"
    config = load("brain: {allowed_callers: ['+15551230000', '+15551239999']}")
    assert config.calls.inbound_numbers == ("+15551230000", "+15551239999")
    own = load("brain: {allowed_callers: ['+15551230000']}\n"
               "calls: {inbound_numbers: '+15557770000, +15557770001'}")
    assert own.calls.inbound_numbers == ("+15557770000", "+15557770001")
    assert own.brain.allowed_callers == ("+15551230000",)
    limits = load("").calls.rate_limits
    assert (limits.per_caller_per_minute, limits.global_per_second) == (5, 10)


def test_an_empty_allow_list_warns_that_no_caller_will_be_answered():
    warned = [w for w in load("").warnings() if w.startswith(EMPTY_ALLOW_LIST)]
    assert len(warned) == 1 and "no inbound caller will be answered" in warned[0]
    assert "calls.inbound: open" in warned[0]  # and how to answer everyone instead
    for text in ("brain: {allowed_callers: ['+15551230000']}",
                 "calls: {inbound_numbers: ['+15551230000']}",
                 "calls: {inbound: open}", "calls: {inbound: disabled}"):
        assert not [w for w in load(text).warnings() if w.startswith(EMPTY_ALLOW_LIST)], text


@pytest.mark.parametrize(("text", "key"), [
    ("calls:\n  inbound: everyone\n", "calls.inbound"),
    ("calls:\n  inbound_numbers: ['5551230000']\n", "calls.inbound_numbers[0]"),
    ("calls:\n  refuse_with: hangup\n", "calls.refuse_with"),
    ("calls:\n  refuse_message: ''\n", "calls.refuse_message"),
    ("calls:\n  refuse_message: '" + "x" * 1001 + "'\n", "calls.refuse_message"),
    ("calls:\n  rate_limits:\n    per_caller_per_minute: -1\n",
     "calls.rate_limits.per_caller_per_minute"),
    ("calls:\n  rate_limits:\n    global_per_second: 1000000\n",
     "calls.rate_limits.global_per_second"),
    ("calls:\n  rate_limits:\n    max_tracked_callers: 0\n",
     "calls.rate_limits.max_tracked_callers"),
])
def test_bad_inbound_settings_name_their_key(text, key):
    assert load_error(text).key == key


def test_provider_stall_timeout_reaches_both_providers():
    from agentic_fast.call.manager import CallDirection, CallSession
    from agentic_fast.providers.factory import provider_factory

    session = CallSession(CallDirection.INBOUND, "+15550001111", "+15550002222")
    for provider, key in (("openai", "openai_realtime"), ("gemini", "gemini")):
        for value, want in (("2.5", 2.5), ("0", None)):
            cfg = Config.from_text(
                f"audio:\n  provider: {provider}\n{key}:\n  api_key: k\n"
                f"bridge:\n  provider_stall_timeout_s: {value}\n", env={})
            made = provider_factory(cfg)(session)
            assert made._stall_timeout_s == want  # type: ignore[attr-defined]
    assert Config().bridge.provider_stall_timeout_s == 5.0
    with pytest.raises(ConfigError, match=r"bridge\.provider_stall_timeout_s"):
        Config.from_text("bridge:\n  provider_stall_timeout_s: -1\n", env={})
