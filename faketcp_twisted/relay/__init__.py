"""
C{twistd faketcp-relay}: UDP <-> fake-TCP, its command line, services,
counters and metrics.

  - L{server<faketcp_twisted.relay.server>}: fake-TCP in, UDP out.
  - L{client<faketcp_twisted.relay.client>}: UDP in, fake-TCP out.
  - L{common<faketcp_twisted.relay.common>}: what both modes share
    (settings, the service, the oversize check).
  - L{contracts<faketcp_twisted.relay.contracts>}: what the relay needs of
    a fake-TCP transport, port and endpoint.
  - L{spec<faketcp_twisted.relay.spec>}: C{--listen} and C{--forward}
    parsed, and the firewall rules they imply.
  - L{udp<faketcp_twisted.relay.udp>}: the batched UDP sockets.
  - L{stats<faketcp_twisted.relay.stats>} and
    L{metrics<faketcp_twisted.relay.metrics>}: the counters, the stats line
    and table, the Prometheus endpoint.
  - L{tap<faketcp_twisted.relay.tap>}: the twistd options and the service
    they make.
"""
