"""Speech-to-speech providers: per provider a sans-I/O event module (build/parse) and a
connection module (socket, reconnect, resumption) behind one small interface. Nothing here
knows about Twilio.
"""
