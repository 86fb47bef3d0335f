"""
Registers the C{faketcp:} endpoint string parsers with Twisted.
"""

from faketcp_twisted.tx.endpoints import FakeTCPClientParser, FakeTCPServerParser

faketcpServerParser = FakeTCPServerParser()
faketcpClientParser = FakeTCPClientParser()
