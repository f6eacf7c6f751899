#!/usr/bin/env python3
"""Long reliability runs on the local AWS stack (moto on 127.0.0.1), with real worker processes.

    infra/chaos.py kill [--kills 200]      # SIGKILL random workers at random times
    infra/chaos.py load [--minutes 10]     # jobs arriving continuously; latency and memory

Both start their own moto server (stopped by PID at the end), create a bucket and a jobs queue
with a dead-letter queue after 5 receives, publish the Iris model, and run `fhe-batch worker`
processes (the worker function's logic as a process) that poll SQS and write to S3. Jobs are
uploaded as `aws s3 cp` would and ingested with `fhe-batch ingest` (moto sends no S3
notifications). At the end every job's result objects are compared byte for byte with a
fault-free local run of the same batch: a missing, extra, or different result is a failure.
Worker stdout lines count how many times each chunk's result was created (must be 1 at most).

Run with the project's venv (infra/local-stack.sh install):
    ~/.cache/fhe-batch/venv/bin/python infra/chaos.py kill
"""

import argparse
import atexit
import shutil
import csv
import hashlib
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = Path(os.environ.get("FHE_BATCH_VENV", Path.home() / ".cache/fhe-batch/venv"))
BUCKET = "fhe-batch-chaos"


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def cli_path():
    """$FHE_BATCH_CLI, or a fresh release build of the CLI."""
    if os.environ.get("FHE_BATCH_CLI"):
        return os.environ["FHE_BATCH_CLI"]
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    subprocess.run(
        ["cargo", "build", "--release", "--locked", "-q", "-p", "fhe-batch-cli"],
        cwd=ROOT, check=True)
    return str(target / "release" / "fhe-batch")


class Stack:
    """A moto server and the clients that talk to it."""

    def __init__(self, port, visibility):
        import boto3
        self.port = port
        self.endpoint = f"http://127.0.0.1:{port}"
        self.env = dict(os.environ, AWS_ENDPOINT_URL=self.endpoint, AWS_ACCESS_KEY_ID="testing",
                        AWS_SECRET_ACCESS_KEY="testing", AWS_REGION="us-east-1",
                        AWS_DEFAULT_REGION="us-east-1", S3_FORCE_PATH_STYLE="true",
                        FHE_BATCH_LOG="error")
        self.proc = subprocess.Popen([str(VENV / "bin/moto_server"), "-H", "127.0.0.1", "-p",
                                      str(port)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        atexit.register(self.stop)  # stopped by its PID whatever happens
        for _ in range(300):
            try:
                urllib.request.urlopen(f"{self.endpoint}/moto-api/", timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        else:
            raise SystemExit("moto did not start")
        kw = dict(endpoint_url=self.endpoint, region_name="us-east-1",
                  aws_access_key_id="testing", aws_secret_access_key="testing")
        self.s3 = boto3.client("s3", **kw)
        self.sqs = boto3.client("sqs", **kw)
        self.s3.create_bucket(Bucket=BUCKET)
        dlq = self.sqs.create_queue(QueueName="chaos-dlq")["QueueUrl"]
        arn = self.sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])[
            "Attributes"]["QueueArn"]
        self.dlq = dlq
        self.queue = self.sqs.create_queue(QueueName="chaos-jobs", Attributes={
            "VisibilityTimeout": str(visibility),
            "RedrivePolicy": json.dumps({"deadLetterTargetArn": arn, "maxReceiveCount": "5"}),
        })["QueueUrl"]
        self.env["FHE_BATCH_BUCKET"] = BUCKET
        self.env["JOBS_QUEUE_URL"] = self.queue

    def stop(self):
        if self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()

    def depth(self, url):
        a = self.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=[
            "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"])["Attributes"]
        return int(a["ApproximateNumberOfMessages"]) + int(a["ApproximateNumberOfMessagesNotVisible"])

    def keys(self, prefix):
        out = []
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
            out.extend(o["Key"] for o in page.get("Contents", []))
        return sorted(out)


class Fixture:
    """Model, key, a few encrypted batches and their fault-free results."""

    def __init__(self, cli, work, chunk_sizes):
        self.cli, self.work = cli, work
        run = lambda *a: subprocess.run([cli, *a], cwd=work, check=True,
                                        stdout=subprocess.DEVNULL, env=dict(os.environ, FHE_BATCH_LOG="error"))
        run("train", "--data", str(ROOT / "data/iris.csv"), "--out", "model")
        run("keygen", "--out", "client.key")
        rows = list(csv.DictReader(open(ROOT / "data/iris.csv")))
        features = [k for k in rows[0] if k != "label"]
        rng = random.Random(7)
        self.batches = {}
        for chunks in chunk_sizes:
            n = chunks * 2048 - rng.randrange(0, 1000)
            path = work / f"b{chunks}.csv"
            with open(path, "w", newline="") as f:
                w = csv.writer(f)
                w.writerow(features)
                for _ in range(n):
                    r = rng.choice(rows)
                    w.writerow([f"{float(r[k]) * rng.uniform(0.9, 1.1):.2f}" for k in features])
            run("encrypt", "--model", "model", "--key", "client.key", "--input", str(path),
                "--out", f"b{chunks}.fheb")
            self.batches[chunks] = ((work / f"b{chunks}.fheb").read_bytes(), n)
        # The fault-free reference: the local pipeline on the same batches.
        ref = ["--store", "ref"]
        run("publish", "--model", "model", *ref)
        for chunks in chunk_sizes:
            run("submit", f"b{chunks}.fheb", *ref)
        run("run", *ref)
        self.reference = {}
        for chunks in chunk_sizes:
            d = work / "ref/results" / f"b{chunks}"
            files = sorted(d.iterdir())
            assert len(files) == chunks, (chunks, files)
            self.reference[chunks] = [result_digest(p.read_bytes()) for p in files]


def result_digest(data):
    """SHA-256 of a result without what names its job: a version-2 result binds itself to its job
    (bytes 72..88, then its batch's header hash at 88..120) and its checksum covers that, so the
    same chunk of the same batch under another job name differs there alone."""
    if len(data) > 120 + 32 and data[4:6] == (2).to_bytes(2, "little"):
        data = data[:72] + data[88:120] + data[120:-32]
    return hashlib.sha256(data).hexdigest()


class Workers:
    """`fhe-batch worker` processes, restartable, with their stdout in files."""

    def __init__(self, cli, stack, work, n, concurrency):
        self.cli, self.stack, self.work, self.concurrency = cli, stack, work, concurrency
        self.procs = [None] * n
        self.started = 0
        for i in range(n):
            self.start(i)

    def start(self, i):
        out = open(self.work / f"worker-{self.started}.jsonl", "w")
        self.procs[i] = subprocess.Popen(
            [self.cli, "worker", "--concurrency", str(self.concurrency)], env=self.stack.env,
            stdout=out, stderr=subprocess.DEVNULL)
        self.started += 1

    def kill(self, i):
        self.procs[i].send_signal(signal.SIGKILL)
        self.procs[i].wait()
        self.start(i)

    def rss_kib(self):
        out = []
        for p in self.procs:
            try:
                for line in open(f"/proc/{p.pid}/status"):
                    if line.startswith("VmRSS:"):
                        out.append(int(line.split()[1]))
            except OSError:
                out.append(0)
        return out

    def stop(self):
        for p in self.procs:
            p.send_signal(signal.SIGTERM)
        for p in self.procs:
            p.wait()

    def outcomes(self):
        written, other = {}, {}
        self.redelivered = 0
        for f in self.work.glob("worker-*.jsonl"):
            for line in open(f):
                try:
                    o = json.loads(line)
                except ValueError:
                    continue  # a line cut by SIGKILL
                key = (o.get("job"), o.get("chunk"))
                if o.get("receive_count", 1) > 1:
                    self.redelivered += 1
                d = written if o["outcome"] == "written" else other
                d[key] = d.get(key, 0) + 1
        return written, other


class Jobs:
    def __init__(self, stack, fixture, cli):
        self.stack, self.fixture, self.cli = stack, fixture, cli
        self.jobs = {}  # job -> (chunks, records, submitted_at, finished_at)
        self.n = 0

    def submit(self, chunks):
        job = f"j{self.n:05d}-b{chunks}"
        self.n += 1
        key = f"inbox/{job}.fheb"
        data, records = self.fixture.batches[chunks]
        t = time.time()
        self.stack.s3.put_object(Bucket=BUCKET, Key=key, Body=data)
        subprocess.run([self.cli, "ingest", key], env=self.stack.env, check=True,
                       stdout=subprocess.DEVNULL)
        self.jobs[job] = [chunks, records, t, None]
        return job

    def poll(self):
        for job, v in self.jobs.items():
            if v[3] is None and len(self.stack.keys(f"results/{job}/")) == v[0]:
                v[3] = time.time()

    def pending(self):
        return [j for j, v in self.jobs.items() if v[3] is None]

    def verify(self, written):
        lost = dup = bad = failed = 0
        for job, (chunks, _, _, _) in self.jobs.items():
            keys = self.stack.keys(f"results/{job}/")
            if self.stack.keys(f"jobs/{job}/failed.json") or self.stack.keys(f"jobs/{job}/errors/"):
                failed += 1
            ref = self.fixture.reference[chunks]
            lost += max(0, chunks - len(keys))
            for c, key in enumerate(keys):
                body = self.stack.s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
                if c >= len(ref) or result_digest(body) != ref[c]:
                    bad += 1
            for c in range(chunks):
                if written.get((job, c), 0) > 1:
                    dup += 1
        return lost, dup, bad, failed


def setup(args, visibility):
    work = Path(tempfile.mkdtemp(prefix="fhe-batch-chaos-"))
    if not args.keep:
        atexit.register(shutil.rmtree, work, True)
    cli = cli_path()
    log(f"work dir {work}; preparing model, key and batches")
    fixture = Fixture(cli, work, [1, 2, 4])
    stack = Stack(args.port, visibility)
    subprocess.run([cli, "publish", "--model", "model"], cwd=work, env=stack.env, check=True,
                   stdout=subprocess.DEVNULL)
    return work, cli, fixture, stack


def drain(stack, jobs, timeout):
    deadline = time.time() + timeout
    while time.time() < deadline:
        jobs.poll()
        if not jobs.pending():
            return True
        time.sleep(0.5)
    return False


def report(result, path):
    print(json.dumps(result, indent=2))
    if path:
        Path(path).write_text(json.dumps(result, indent=2) + "\n")


def kill_mode(args):
    work, cli, fixture, stack = setup(args, visibility=5)
    workers = Workers(cli, stack, work, args.workers, 2)
    jobs = Jobs(stack, fixture, cli)
    rng = random.Random(11)
    kills = 0
    t0 = time.time()
    try:
        while kills < args.kills:
            # Keep work queued so that every kill can strike a busy worker.
            if stack.depth(stack.queue) < 30:
                jobs.submit(rng.choice([1, 2, 4]))
            time.sleep(rng.uniform(0.1, 1.0))
            workers.kill(rng.randrange(len(workers.procs)))
            kills += 1
            if kills % 25 == 0:
                log(f"{kills} kills, {len(jobs.jobs)} jobs submitted")
        log("kills done; draining")
        ok = drain(stack, jobs, 600)
        elapsed = time.time() - t0
    finally:
        workers.stop()
    written, other = workers.outcomes()
    lost, dup, bad, failed = jobs.verify(written)
    dlq = stack.depth(stack.dlq)
    stack.stop()
    chunks = sum(v[0] for v in jobs.jobs.values())
    result = {
        "mode": "kill", "kills": kills, "worker_processes_started": workers.started,
        "jobs": len(jobs.jobs), "chunks": chunks,
        "records": sum(v[1] for v in jobs.jobs.values()), "all_jobs_finished": ok,
        "results_written": sum(written.values()), "duplicate_deliveries_answered": sum(other.values()),
        "messages_handled_after_redelivery": workers.redelivered,
        "lost_chunks": lost, "chunks_created_twice": dup, "results_differing_from_reference": bad,
        "failed_jobs": failed, "dead_letters": dlq, "elapsed_s": round(elapsed, 1),
    }
    report(result, args.out)
    return 0 if ok and lost == dup == bad == failed == dlq == 0 else 1


def load_mode(args):
    work, cli, fixture, stack = setup(args, visibility=30)
    workers = Workers(cli, stack, work, args.workers, 2)
    jobs = Jobs(stack, fixture, cli)
    rng = random.Random(12)
    rss = []  # (t, [kib per worker])
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            rss.append((round(time.time() - t0, 1), workers.rss_kib()))
            stop.wait(5)

    t0 = time.time()
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    end = t0 + args.minutes * 60
    next_job = t0
    try:
        while time.time() < end:
            if time.time() >= next_job:
                jobs.submit(rng.choice([1, 1, 2, 4]))
                next_job += rng.expovariate(1 / args.interval)
            jobs.poll()
            time.sleep(0.2)
        log("arrivals stopped; draining")
        ok = drain(stack, jobs, 600)
        elapsed = time.time() - t0
    finally:
        stop.set()
        sampler.join()
        workers.stop()
    written, other = workers.outcomes()
    lost, dup, bad, failed = jobs.verify(written)
    dlq = stack.depth(stack.dlq)
    stack.stop()
    lat = sorted(v[3] - v[2] for v in jobs.jobs.values() if v[3] is not None)
    q = lambda p: round(lat[min(len(lat) - 1, int(p * len(lat)))], 2) if lat else None
    records = sum(v[1] for v in jobs.jobs.values())
    first = rss[1][1] if len(rss) > 1 else rss[0][1]
    last = rss[-1][1]
    result = {
        "mode": "load", "minutes": args.minutes, "worker_processes": args.workers,
        "jobs": len(jobs.jobs), "chunks": sum(v[0] for v in jobs.jobs.values()),
        "records": records, "records_per_s": round(records / elapsed, 1),
        "job_latency_s": {"p50": q(0.5), "p90": q(0.9), "p99": q(0.99), "max": q(1.0),
                          "mean": round(statistics.mean(lat), 2) if lat else None},
        "worker_rss_mib": {"first_sample": [round(k / 1024, 1) for k in first],
                           "last_sample": [round(k / 1024, 1) for k in last],
                           "max": [round(max(s[1][i] for s in rss) / 1024, 1)
                                   for i in range(args.workers)]},
        "rss_samples": [(t, [round(k / 1024, 1) for k in v]) for t, v in rss],
        "all_jobs_finished": ok, "lost_chunks": lost, "chunks_created_twice": dup,
        "results_differing_from_reference": bad, "failed_jobs": failed, "dead_letters": dlq,
        "duplicate_deliveries_answered": sum(other.values()),
        "messages_handled_after_redelivery": workers.redelivered, "elapsed_s": round(elapsed, 1),
    }
    report(result, args.out)
    return 0 if ok and lost == dup == bad == failed == dlq == 0 else 1


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="mode", required=True)
    k = sub.add_parser("kill")
    k.add_argument("--kills", type=int, default=200)
    k.add_argument("--workers", type=int, default=3)
    l = sub.add_parser("load")
    l.add_argument("--minutes", type=float, default=10)
    l.add_argument("--workers", type=int, default=3)
    l.add_argument("--interval", type=float, default=1.5, help="mean seconds between job arrivals")
    for s in (k, l):
        s.add_argument("--port", type=int, default=5077)
        s.add_argument("--out", help="also write the JSON report here")
        s.add_argument("--keep", action="store_true", help="keep the work dir (worker logs)")
    args = p.parse_args()
    sys.exit(kill_mode(args) if args.mode == "kill" else load_mode(args))


if __name__ == "__main__":
    main()
