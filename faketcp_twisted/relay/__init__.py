"""
C{twistd faketcp-relay}: UDP <-> fake-TCP, its command line, services,
counters and metrics.
"""
