"""
Registers C{twistd faketcp-relay} (UDP <-> fake-TCP) with Twisted.

ServiceMaker imports the named module only when the command is used, so
this file stays cheap for every other twistd command.
"""

from twisted.application.service import ServiceMaker

faketcpRelay = ServiceMaker(
    "faketcp-relay",
    "faketcp_twisted.relay.tap",
    "Relay UDP datagrams over fake-TCP (tcpraw / kcptun --tcp compatible)",
    "faketcp-relay",
)
