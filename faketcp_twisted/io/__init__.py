"""
What faces the kernel: the capture and raw sockets, the kernel's TCP
sockets of the flows, the firewall rules that silence them, and the
per-packet fast path (C, with a pure-Python twin).
"""
