"""
The face-neutral engine: the event-loop contract, the demultiplexer of a
capture, connections, the contracts between those and the faces
(L{contracts}), the listening and connecting sides, and adoption of the
kernel's handshakes.  Both faces (L{faketcp_twisted.tx} for Twisted,
L{faketcp_twisted.aio} for asyncio) stand on it.
"""
