"""moto's S3 server for the compose cluster, with its buckets made.

Serves on 0.0.0.0:$S3_PORT (5000), creates every bucket in $S3_BUCKETS
(comma-separated, default "neon"), then writes /tmp/s3-ready (the
healthcheck) and serves until stopped. Objects live in memory: they last as
long as this container.
"""

import os
import signal
import threading

import boto3
from moto.server import ThreadedMotoServer

port = int(os.environ.get("S3_PORT", "5000"))
buckets = [b for b in os.environ.get("S3_BUCKETS", "neon").split(",") if b]
region = os.environ.get("AWS_DEFAULT_REGION", "us-east-1")

server = ThreadedMotoServer(ip_address="0.0.0.0", port=port)
server.start()
s3 = boto3.client(
    "s3",
    endpoint_url=f"http://127.0.0.1:{port}",
    region_name=region,
    aws_access_key_id=os.environ.get("AWS_ACCESS_KEY_ID", "neon"),
    aws_secret_access_key=os.environ.get("AWS_SECRET_ACCESS_KEY", "neon"),
)
existing = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
for bucket in buckets:
    if bucket not in existing:
        s3.create_bucket(Bucket=bucket)
print(f"moto S3 server on port {port}, buckets: {', '.join(buckets)}", flush=True)
with open("/tmp/s3-ready", "w") as f:
    f.write("ok\n")

stop = threading.Event()
for sig in (signal.SIGTERM, signal.SIGINT):
    signal.signal(sig, lambda *_: stop.set())
stop.wait()
server.stop()
