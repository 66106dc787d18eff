"""The longest chain of requests that went one after another, from the spans
ci/counting-proxy.py logs: each request in it arrived after the one before it was answered.
Requests sent together overlap and add one to the chain, not one each, so this counts the
round trips a run waited for one after another, whatever the delay per request.

    python3 ci/request-chain.py SPANS

Prints the number of requests and the length of the longest chain.
"""
import sys

spans = []
with open(sys.argv[1]) as f:
    for line in f:
        start, end, *_ = line.split()
        spans.append((float(start), float(end)))
spans.sort()
# chain[i]: the longest chain ending with request i.
chain = []
for i, (start, _) in enumerate(spans):
    before = [chain[j] for j in range(i) if spans[j][1] <= start]
    chain.append(1 + max(before, default=0))
print(f"requests {len(spans)} chain {max(chain, default=0)}")
