"""
The sans-IO core: the segment codec, the classic-BPF assembler, the flow
state machine, the flow table, key proofs and the timer rotation.

Nothing here touches a socket or a clock, and nothing imports Twisted,
asyncio or zope (C{tests.test_layers} proves it): flows are fed segments
and the time, and hand back payloads to deliver and packets to send.
"""
