"""The arm64 bootstraps `sam build` made, each run under qemu-aarch64 through the Lambda runtime
loop against the local S3/SQS endpoint: status answers the Function URL fixture (QUEUED), ingest
the S3 fixture, the worker the queued chunk, status SUCCEEDED, and the x86_64 CLI decrypts the
150 Iris predictions. Emulation checks that the binaries work, not how fast Graviton is.

    python infra/arm64_smoke.py WRAPPERS_DIR FHE_BATCH_CLI

WRAPPERS_DIR holds an executable per function (ingest, worker, status, deadletter) that runs
its bootstrap under qemu-aarch64 (infra/sam-build.sh writes them)."""
import json
import os
import pathlib
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import boto3  # noqa: E402

import runtime_loop_test as rt  # noqa: E402

fns = {k: pathlib.Path(sys.argv[1]) / k for k in rt.FUNCTIONS}
cli = pathlib.Path(sys.argv[2])
work = pathlib.Path(tempfile.mkdtemp(prefix="fheb-arm64-"))
s3 = boto3.client("s3", endpoint_url=rt.ENDPOINT)
sqs = boto3.client("sqs", endpoint_url=rt.ENDPOINT)
bucket = f"fheb-arm64-{os.getpid()}"
try:
    rt.run(cli, "train", "--data", rt.ROOT / "data/iris.csv", "--out", work / "model")
    rt.run(cli, "keygen", "--out", work / "client.key")
    rt.run(cli, "encrypt", "--model", work / "model", "--key", work / "client.key",
           "--input", rt.ROOT / "data/iris.csv", "--out", work / "claims-2026.fheb")
    s3.create_bucket(Bucket=bucket)
    queue_url = sqs.create_queue(QueueName=f"{bucket}-jobs",
                                 Attributes={"VisibilityTimeout": "60"})["QueueUrl"]
    rt.run(cli, "publish", "--model", work / "model", "--bucket", bucket)
    rt.run(cli, "submit", work / "claims-2026.fheb", "--bucket", bucket)
    env = {"FHE_BATCH_BUCKET": bucket, "JOBS_QUEUE_URL": queue_url, "S3_FORCE_PATH_STYLE": "true"}
    rt.start(["cargo", "lambda", "watch", "--only-lambda-apis", "--invoke-address", "127.0.0.1",
              "--invoke-port", str(rt.PORT)], log=open(work / "watch.log", "w"))
    time.sleep(2.0)
    out = rt.with_function(fns["status"], env, rt.FIXTURES / "status-get-job.json", work)
    assert json.loads(out["body"])["state"] == "QUEUED", out
    out = rt.with_function(fns["ingest"], env, rt.s3_event(work, bucket, None, "s3.json"), work)
    assert out["ingested"][0]["outcome"] == "queued", out
    msgs = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=1,
                               WaitTimeSeconds=2)["Messages"]
    rt.sqs_event(work, msgs[0], "sqs.json")
    out = rt.with_function(fns["worker"], env, work / "sqs.json", work)
    assert out == {"batchItemFailures": []}, out
    out = rt.with_function(fns["status"], env, rt.FIXTURES / "status-get-job.json", work)
    st = json.loads(out["body"])
    assert st["state"] == "SUCCEEDED" and st["records"] == 150, st
    rt.run(cli, "decrypt", "--model", work / "model", "--key", work / "client.key",
           "--job", "claims-2026", "--bucket", bucket, "--out", work / "p.csv")
    rows = (work / "p.csv").read_text().splitlines()
    assert len(rows) == 151, len(rows)
    print(f"arm64 bootstraps under qemu: status QUEUED, ingest queued, worker evaluated, status SUCCEEDED, {len(rows) - 1} predictions decrypted")
finally:
    for p in rt.procs:
        rt.stop(p)
