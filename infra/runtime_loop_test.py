"""Drives the three release binaries through the real Lambda runtime loop, without Docker:
`cargo lambda watch --only-lambda-apis` emulates the Lambda Runtime API on 127.0.0.1, each
function binary runs against it as it would on provided.al2023, and `cargo lambda invoke
--data-file` sends the event fixtures of tests/fixtures/events (the same files `sam local
invoke -e` takes). S3 and SQS are the moto server infra/test.sh started (AWS_ENDPOINT_URL).

Flow: train, keygen and encrypt with the fhe-batch CLI; publish the model and submit the batch
to a fresh bucket with the CLI; invoke ingest with the S3 fixture; invoke the worker with an SQS
event built from the real queued message; invoke status with the Function URL fixture; check
status, fetch and decrypt with the CLI; a second job lost to the dead-letter function, retried
with `fhe-batch retry --bucket --queue-url` and run as attempt 2; then a neural network (imported from ONNX, evaluation key
published) through ingest and the worker. Every process started here is stopped by its PID. Exits non-zero on any failure.

Usage: python runtime_loop_test.py TARGET_RELEASE_DIR
       python runtime_loop_test.py --ingest BOOTSTRAP --worker BOOTSTRAP --status BOOTSTRAP
         (the binaries `sam build` produced; the CLI comes from $FHE_BATCH_CLI)
"""
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import boto3

ROOT = pathlib.Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "events"
PORT = int(os.environ.get("RUNTIME_API_PORT", "9001"))
ENDPOINT = os.environ["AWS_ENDPOINT_URL"]
procs = []


def run(*args, **kw):
    print("+", " ".join(map(str, args)), flush=True)
    return subprocess.run(list(map(str, args)), check=True, capture_output=True, text=True, **kw)


def start(args, env=None, log=None):
    p = subprocess.Popen(list(map(str, args)), env=env, stdout=log, stderr=subprocess.STDOUT)
    procs.append(p)
    return p


def stop(p):
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()


def invoke(data_file):
    out = run("cargo", "lambda", "invoke", "--invoke-address", "127.0.0.1",
              "--invoke-port", PORT, "--data-file", data_file)
    print(out.stdout.strip()[:400], flush=True)
    return json.loads(out.stdout)


def s3_event(work, bucket, key, name):
    """The S3 fixture pointed at `bucket` and `key`, written to `work/name`; returns its path."""
    event = json.loads((FIXTURES / "s3-put.json").read_text())
    event["Records"][0]["s3"]["bucket"]["name"] = bucket
    if key is not None:
        event["Records"][0]["s3"]["object"]["key"] = key
    (work / name).write_text(json.dumps(event))
    return work / name


def sqs_event(work, message, name):
    """The SQS fixture carrying one received `message`, written to `work/name`; returns its path."""
    event = json.loads((FIXTURES / "sqs-chunk.json").read_text())
    event["Records"][0].update(messageId=message["MessageId"],
                               receiptHandle=message["ReceiptHandle"], body=message["Body"])
    (work / name).write_text(json.dumps(event))
    return work / name


def with_function(binary, env, data_file, work):
    """Runs one function binary against the runtime API for one invocation."""
    fenv = dict(os.environ, **env,
                AWS_LAMBDA_RUNTIME_API=f"http://127.0.0.1:{PORT}/.rt",
                AWS_LAMBDA_FUNCTION_NAME="_", AWS_LAMBDA_FUNCTION_VERSION="1",
                AWS_LAMBDA_FUNCTION_MEMORY_SIZE="512", RUST_LOG="info")
    log_path = work / f"{binary.parent.name}-{binary.name}.log"
    with open(log_path, "w") as log:
        p = start([binary], env=fenv, log=log)
        try:
            time.sleep(0.3)
            if p.poll() is not None:
                raise SystemExit(f"{binary} exited early:\n" + log_path.read_text())
            return invoke(data_file)
        finally:
            stop(p)


FUNCTIONS = ("ingest", "worker", "status", "deadletter")


def main(argv):
    if argv[0].startswith("--"):
        opts = dict(zip(argv[0::2], argv[1::2]))
        fns = {k: pathlib.Path(opts[f"--{k}"]).resolve() for k in FUNCTIONS}
        cli = pathlib.Path(os.environ["FHE_BATCH_CLI"])
    else:
        release = pathlib.Path(argv[0])
        fns = {k: release / k for k in FUNCTIONS}
        cli = release / "fhe-batch"
    work = pathlib.Path(tempfile.mkdtemp(prefix="fheb-rt-"))
    s3 = boto3.client("s3", endpoint_url=ENDPOINT)
    sqs = boto3.client("sqs", endpoint_url=ENDPOINT)
    bucket = f"fheb-rt-{os.getpid()}"
    try:
        # Client side: a model, a key and an encrypted batch of the 150 Iris records.
        run(cli, "train", "--data", ROOT / "data/iris.csv", "--out", work / "model")
        run(cli, "keygen", "--out", work / "client.key")
        run(cli, "encrypt", "--model", work / "model", "--key", work / "client.key",
            "--input", ROOT / "data/iris.csv", "--out", work / "claims-2026.fheb")
        model_id = json.loads((work / "model/manifest.json").read_text())["model_id"]

        # The stack: bucket, job queue; model published, batch uploaded.
        s3.create_bucket(Bucket=bucket)
        queue_url = sqs.create_queue(QueueName=f"{bucket}-jobs",
                                     Attributes={"VisibilityTimeout": "30"})["QueueUrl"]
        # The CLI publishes and uploads over the S3 wire protocol (as it would to AWS).
        run(cli, "publish", "--model", work / "model", "--bucket", bucket)
        run(cli, "submit", work / "claims-2026.fheb", "--bucket", bucket)
        assert s3.head_object(Bucket=bucket, Key=f"models/{model_id}/server.bin")
        env = {"FHE_BATCH_BUCKET": bucket, "JOBS_QUEUE_URL": queue_url, "S3_FORCE_PATH_STYLE": "true"}

        watch_log = open(work / "watch.log", "w")
        start(["cargo", "lambda", "watch", "--only-lambda-apis", "--invoke-address", "127.0.0.1",
               "--invoke-port", str(PORT)], log=watch_log)
        time.sleep(2.0)

        # status before ingest, through the status binary: the uploaded job is QUEUED, a job
        # nobody uploaded is 404 (not "storage unavailable").
        out = with_function(fns["status"], env, FIXTURES / "status-get-job.json", work)
        assert out["statusCode"] == 200, out
        assert json.loads(out["body"])["state"] == "QUEUED", out
        unknown = json.loads((FIXTURES / "status-get-job.json").read_text())
        unknown["rawPath"] = unknown["requestContext"]["http"]["path"] = "/jobs/nobody-uploaded-this"
        (work / "status-unknown.json").write_text(json.dumps(unknown))
        out = with_function(fns["status"], env, work / "status-unknown.json", work)
        assert out["statusCode"] == 404, out

        # ingest: the S3 fixture, pointed at this bucket.
        out = with_function(fns["ingest"], env, s3_event(work, bucket, None, "s3.json"), work)
        assert out == {"ingested": [{"job": "claims-2026", "outcome": "queued", "chunks": 1}]}, out
        out = with_function(fns["ingest"], env, FIXTURES / "s3-test-event.json", work)
        assert out == {"ingested": []}, out

        # worker: an SQS event built from the real queued message.
        msgs = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10,
                                   AttributeNames=["All"], WaitTimeSeconds=2).get("Messages", [])
        assert len(msgs) == 1, msgs
        out = with_function(fns["worker"], env, sqs_event(work, msgs[0], "sqs.json"), work)
        assert out == {"batchItemFailures": []}, out

        # deadletter: a chunk of a second job whose worker "never finished" (its message is
        # handed to the dead-letter function instead) is recorded, and that job ends FAILED; the
        # finished job's message, dead-lettered too, changes nothing.
        run(cli, "submit", work / "claims-2026.fheb", "--job", "claims-lost", "--bucket", bucket)
        s3_event(work, bucket, "inbox/claims-lost.fheb", "s3-lost.json")
        out = with_function(fns["ingest"], env, work / "s3-lost.json", work)
        assert out["ingested"][0]["job"] == "claims-lost", out
        lost = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=1,
                                   WaitTimeSeconds=2).get("Messages", [])
        assert len(lost) == 1, lost
        sqs_event(work, lost[0], "dead.json")
        out = with_function(fns["deadletter"], env, work / "dead.json", work)
        assert out == {"batchItemFailures": []}, out
        out = with_function(fns["deadletter"], env, work / "sqs.json", work)
        assert out == {"batchItemFailures": []}, out
        status_lost = json.loads((FIXTURES / "status-get-job.json").read_text())
        status_lost["rawPath"] = status_lost["requestContext"]["http"]["path"] = "/jobs/claims-lost"
        (work / "status-lost.json").write_text(json.dumps(status_lost))
        out = with_function(fns["status"], env, work / "status-lost.json", work)
        lost_status = json.loads(out["body"])
        assert lost_status["state"] == "FAILED", lost_status
        assert lost_status["failures"][0]["kind"] == "worker_lost", lost_status
        assert lost_status["attempt"] == 1, lost_status

        # retry: the CLI records attempt 2 in S3 and sends the lost chunk to SQS. Attempt 1's
        # dead letter handed over again now records nothing (it is stale), the worker binary
        # runs attempt 2's message, and the status binary reports attempt 2 SUCCEEDED with no
        # failures. Handled messages are deleted, as the event source mapping and the move to
        # the dead-letter queue would.
        for m in (msgs[0], lost[0]):
            sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=m["ReceiptHandle"])
        out = run(cli, "retry", "claims-lost", "--bucket", bucket, "--queue-url", queue_url).stdout
        assert "job claims-lost: attempt 2: queued 1 unfinished chunks again" in out, out
        retried = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10,
                                      WaitTimeSeconds=2).get("Messages", [])
        assert [json.loads(m["Body"]).get("attempt") for m in retried] == [2], retried
        out = with_function(fns["deadletter"], env, work / "dead.json", work)
        assert out == {"batchItemFailures": []}, out
        sqs_event(work, retried[0], "sqs-retried.json")
        out = with_function(fns["worker"], env, work / "sqs-retried.json", work)
        assert out == {"batchItemFailures": []}, out
        sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=retried[0]["ReceiptHandle"])
        out = with_function(fns["status"], env, work / "status-lost.json", work)
        retried_status = json.loads(out["body"])
        assert (retried_status["state"], retried_status["attempt"]) == ("SUCCEEDED", 2), retried_status
        assert retried_status["failures"] == [], retried_status

        # status: the Function URL fixture.
        out = with_function(fns["status"], env, FIXTURES / "status-get-job.json", work)
        assert out["statusCode"] == 200, out
        status = json.loads(out["body"])
        assert status["state"] == "SUCCEEDED" and status["chunks_done"] == 1, status

        # Client side again: status, fetch and decrypt with the CLI.
        out = run(cli, "status", "claims-2026", "--bucket", bucket).stdout
        assert "SUCCEEDED 1/1 chunks" in out, out
        run(cli, "fetch", "claims-2026", "--out", work / "results", "--bucket", bucket)
        run(cli, "decrypt", "--model", work / "model", "--key", work / "client.key",
            "--results", work / "results", "--out", work / "predictions.csv")
        lines = (work / "predictions.csv").read_text().splitlines()
        assert len(lines) == 151, len(lines)

        # A neural network through the same binaries: the breast-cancer MLP imported from ONNX,
        # the data owner's evaluation key published once, 24 records bootstrapped (32 per
        # record) by the worker binary, which downloads and expands the key.
        run(cli, "import", "--onnx", ROOT / "tests/fixtures/onnx/bc-mlp-30-32-2.onnx",
            "--data", ROOT / "data/breast_cancer.csv", "--out", work / "mlp")
        run(cli, "publish-key", "--key", work / "client.key", "--bucket", bucket)
        rows = (ROOT / "data/breast_cancer.csv").read_text().splitlines()[:25]
        (work / "bc24.csv").write_text("\n".join(rows) + "\n")
        run(cli, "encrypt", "--model", work / "mlp", "--key", work / "client.key",
            "--input", work / "bc24.csv", "--out", work / "bc-mlp.fheb")
        run(cli, "publish", "--model", work / "mlp", "--bucket", bucket)
        run(cli, "submit", work / "bc-mlp.fheb", "--bucket", bucket)
        s3_event(work, bucket, "inbox/bc-mlp.fheb", "s3-mlp.json")
        out = with_function(fns["ingest"], env, work / "s3-mlp.json", work)
        assert out == {"ingested": [{"job": "bc-mlp", "outcome": "queued", "chunks": 1}]}, out
        msgs = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10,
                                   WaitTimeSeconds=2).get("Messages", [])
        assert len(msgs) == 1, msgs
        sqs_event(work, msgs[0], "sqs-mlp.json")
        out = with_function(fns["worker"], env, work / "sqs-mlp.json", work)
        assert out == {"batchItemFailures": []}, out
        out = run(cli, "status", "bc-mlp", "--bucket", bucket).stdout
        assert "SUCCEEDED 1/1 chunks" in out, out
        run(cli, "fetch", "bc-mlp", "--out", work / "mlp-results", "--bucket", bucket)
        run(cli, "decrypt", "--model", work / "mlp", "--key", work / "client.key",
            "--results", work / "mlp-results", "--out", work / "mlp-predictions.csv")
        lines = (work / "mlp-predictions.csv").read_text().splitlines()
        assert len(lines) == 25, len(lines)
        assert all(("benign" in l or "malignant" in l) for l in lines[1:]), lines[:3]

        # Public-key batches through the same binaries: a producer directory that holds only
        # the public key publish-key wrote (it names the evaluation key) encrypts for the
        # linear model, the network and an imported decision tree; the owner decrypts each and
        # gets exactly what the secret-key batch of the same records gave.
        producer = work / "producer"
        producer.mkdir()
        shutil.copy(work / "client.pub", producer / "owner.pub")
        run(cli, "import", "--onnx", ROOT / "tests/fixtures/onnx/bc-tree-d4.onnx",
            "--data", ROOT / "data/breast_cancer.csv", "--out", work / "tree")
        run(cli, "publish", "--model", work / "tree", "--bucket", bucket)

        def through_binaries(job, batch):
            run(cli, "submit", batch, "--job", job, "--bucket", bucket)
            s3_event(work, bucket, f"inbox/{job}.fheb", f"s3-{job}.json")
            out = with_function(fns["ingest"], env, work / f"s3-{job}.json", work)
            assert out["ingested"][0]["outcome"] == "queued", out
            chunks = out["ingested"][0]["chunks"]
            done = 0
            while done < chunks:
                msgs = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=1,
                                           WaitTimeSeconds=2).get("Messages", [])
                assert len(msgs) == 1, msgs
                if json.loads(msgs[0]["Body"])["job"] != job:
                    # A message the steps above left in the queue (the dead-lettered one
                    # reappears after its visibility timeout): not this job's.
                    sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=msgs[0]["ReceiptHandle"])
                    continue
                done += 1
                sqs_event(work, msgs[0], f"sqs-{job}.json")
                out = with_function(fns["worker"], env, work / f"sqs-{job}.json", work)
                assert out == {"batchItemFailures": []}, out
            out = run(cli, "status", job, "--bucket", bucket).stdout
            assert f"SUCCEEDED {chunks}/{chunks} chunks" in out, out

        def decrypt(model, job):
            run(cli, "decrypt", "--model", work / model, "--key", work / "client.key",
                "--job", job, "--bucket", bucket, "--out", work / f"{job.replace('/', '-')}.csv")
            return (work / f"{job.replace('/', '-')}.csv").read_text()

        run(cli, "encrypt", "--model", work / "tree", "--key", work / "client.key",
            "--input", work / "bc24.csv", "--out", work / "tree-sk.fheb")
        through_binaries("tree-sk", work / "tree-sk.fheb")
        for model, data, job, reference in [
            ("model", ROOT / "data/iris.csv", "iris-pk", "claims-2026"),
            ("mlp", work / "bc24.csv", "mlp-pk", "bc-mlp"),
            ("tree", work / "bc24.csv", "tree-pk", "tree-sk"),
        ]:
            out = run(cli, "encrypt", "--model", work / model, "--public-key", "owner.pub",
                      "--input", data, "--out", f"{job}.fheb", cwd=producer).stdout
            assert "public-key encryption" in out, out
            through_binaries(job, producer / f"{job}.fheb")
            got, want = decrypt(model, job), decrypt(model, reference)
            if model == "mlp":
                # A network's scores are approximate (their proven error, and a fresh noise
                # draw each run): the predicted labels agree, the scores need not.
                got, want = ([l.split(",")[:2] for l in t.splitlines()] for t in (got, want))
            assert got == want, (job, got, want)
        assert sorted(p.name for p in producer.iterdir()) == sorted(
            ["owner.pub", "iris-pk.fheb", "mlp-pk.fheb", "tree-pk.fheb"])

        # Tenants (Tenancy=multi) through the ingest, worker and status binaries: tenant acme's
        # batch runs as acme/claims under its own prefixes, and the status binary answers a
        # caller by its signed identity (the Function URL authorizer's userArn).
        multi = dict(env, FHE_BATCH_TENANCY="multi", FHE_BATCH_TENANT_ROLE_PREFIX="fheb-tenant-")
        run(cli, "submit", work / "claims-2026.fheb", "--job", "acme/claims", "--bucket", bucket)
        s3_event(work, bucket, "inbox/acme/claims.fheb", "s3-acme.json")
        out = with_function(fns["ingest"], multi, work / "s3-acme.json", work)
        assert out["ingested"][0]["outcome"] == "queued", out
        assert out["ingested"][0]["job"] == "acme/claims", out
        while True:
            msgs = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=1,
                                       WaitTimeSeconds=2).get("Messages", [])
            assert len(msgs) == 1, msgs
            if json.loads(msgs[0]["Body"])["job"] == "acme/claims":
                break
            sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=msgs[0]["ReceiptHandle"])
        sqs_event(work, msgs[0], "sqs-acme.json")
        out = with_function(fns["worker"], multi, work / "sqs-acme.json", work)
        assert out == {"batchItemFailures": []}, out
        assert s3.list_objects_v2(Bucket=bucket, Prefix="results/acme/claims/")["KeyCount"] == 1

        def tenant_status(path, role):
            req = json.loads((FIXTURES / "status-get-job.json").read_text())
            req["rawPath"] = req["requestContext"]["http"]["path"] = path
            if role:
                req["requestContext"]["authorizer"] = {"iam": {
                    "accessKey": "ASIA0000000000000000", "accountId": "123456789012",
                    "callerId": "AROA0000000000000000:s", "userId": "AROA0000000000000000:s",
                    "userArn": f"arn:aws:sts::123456789012:assumed-role/{role}/s"}}
            (work / "status-tenant.json").write_text(json.dumps(req))
            return with_function(fns["status"], multi, work / "status-tenant.json", work)

        out = tenant_status("/jobs/claims", "fheb-tenant-acme")
        assert out["statusCode"] == 200, out
        st = json.loads(out["body"])
        assert (st["job"], st["state"], st["records"]) == ("acme/claims", "SUCCEEDED", 150), st
        out = tenant_status("/jobs", "fheb-tenant-acme")
        assert json.loads(out["body"])["jobs"] == ["acme/claims"], out
        assert tenant_status("/jobs/acme/claims", "fheb-tenant-globex")["statusCode"] == 404
        assert tenant_status("/jobs/claims", "some-admin-role")["statusCode"] == 403
        assert tenant_status("/jobs/claims", None)["statusCode"] == 403
        assert decrypt("model", "acme/claims") == decrypt("model", "claims-2026")
        print("runtime loop: ingest, worker, status and deadletter answered their fixtures; a FAILED job retried as attempt 2; 150 linear and 24 neural-network predictions decrypted; public-key batches for the linear model, the network and a tree decrypted to their secret-key predictions; a tenant's job ran under its prefixes and the status binary answered each caller for its own tenant")
    finally:
        for p in procs:
            stop(p)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main(sys.argv[1:])
