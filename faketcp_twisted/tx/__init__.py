"""
The Twisted face: the transport, the listening port, the endpoints and the
C{faketcp:} endpoint string parsers.
"""
