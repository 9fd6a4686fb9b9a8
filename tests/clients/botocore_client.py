"""A real botocore credential (or, with `region`, region) fetch from IMDS,
for the lab. With `cached SECONDS RATE`, one session's credentials read
RATE times a second for SECONDS, as a service that keeps its client does
(botocore refreshes them itself, before they expire); with `per-call
SECONDS RATE`, a new session for every read, as a service that builds its
client per call does (a token and credentials fetched each time).

Runs botocore's own credential chain with nothing but IMDS to find
(AWS_EC2_METADATA_SERVICE_ENDPOINT points it at the lab's fake IMDS) and
prints one JSON line: when it started and ended, and whether credentials
came back. Never prints a credential value.
"""
import json
import os
import sys
import time

# Only the instance-metadata provider may answer.
for var in list(os.environ):
    if var.startswith("AWS_") and var not in ("AWS_EC2_METADATA_SERVICE_ENDPOINT",):
        del os.environ[var]
os.environ["AWS_CONFIG_FILE"] = "/nonexistent"
os.environ["AWS_SHARED_CREDENTIALS_FILE"] = "/nonexistent"

import botocore.session  # noqa: E402

import botocore.utils  # noqa: E402

# `region`: ask IMDS only where the instance runs, as botocore's region
# chain does (IMDSRegionProvider: the zone, with a token when it gets one).
want_region = sys.argv[1:] == ["region"]
loop = sys.argv[1] if sys.argv[1:2] in (["cached"], ["per-call"]) else None
start = time.time()
outcome, key_len, error, region, calls = "error", 0, None, None, 0
try:
    session = botocore.session.get_session()
    if loop:
        seconds, rate = float(sys.argv[2]), float(sys.argv[3])
        ok = True
        while time.time() < start + seconds:
            if loop == "per-call":
                session = botocore.session.get_session()
            creds = session.get_credentials()
            ok = ok and creds is not None and bool(creds.get_frozen_credentials().access_key)
            calls += 1
            time.sleep(1 / rate)
        if ok:
            outcome = "ok"
    elif want_region:
        region = botocore.utils.IMDSRegionProvider(session).provide()
        if region:
            outcome = "ok"
    else:
        creds = session.get_credentials()
        if creds is not None:
            frozen = creds.get_frozen_credentials()
            outcome, key_len = "ok", len(frozen.access_key or "")
except Exception as e:  # noqa: BLE001 - report the class only, never the text
    error = type(e).__name__
print(json.dumps({"t_start": start, "t_end": time.time(), "outcome": outcome, "error": error,
                  "key_id_len": key_len, "region": region, "calls": calls,
                  "botocore": botocore.__version__}))
sys.exit(0 if outcome == "ok" else 3)
