#!/usr/bin/env bash
# Local AWS stack for tests and experiments: a moto server on 127.0.0.1 as the S3 and SQS endpoint.
#
#   infra/local-stack.sh install        # venv with moto, cfn-lint, aws-sam-translator (idempotent)
#   infra/local-stack.sh start [PORT]   # start moto (default port 5055), wait until it answers
#   infra/local-stack.sh stop  [PORT]   # stop it by its recorded PID
#   infra/local-stack.sh env   [PORT]   # print the AWS_* variables that point the SDK at it
#   infra/local-stack.sh create [PORT]  # bucket fhe-batch-local, queue fhe-batch-jobs + DLQ (5 receives)
#
# The venv lives outside the clone ($FHE_BATCH_VENV, default ~/.cache/fhe-batch/venv).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
VENV="${FHE_BATCH_VENV:-$HOME/.cache/fhe-batch/venv}"
PORT="${2:-${MOTO_PORT:-5055}}"
RUN_DIR="${FHE_BATCH_RUN_DIR:-$HOME/.cache/fhe-batch/run}"
PIDF="$RUN_DIR/moto.$PORT.pid"
LOG="$RUN_DIR/moto.$PORT.log"

case "${1:-}" in
  install)
    if [ ! -x "$VENV/bin/moto_server" ] || [ ! -x "$VENV/bin/cfn-lint" ] \
       || ! cmp -s "$here/requirements-ci.txt" "$VENV/.requirements"; then
      python3 -m venv "$VENV"
      "$VENV/bin/pip" install --quiet --disable-pip-version-check -r "$here/requirements-ci.txt"
      cp "$here/requirements-ci.txt" "$VENV/.requirements"
    fi
    ;;
  start)
    mkdir -p "$RUN_DIR"
    if [ -f "$PIDF" ] && kill -0 "$(cat "$PIDF")" 2>/dev/null; then
      echo "moto already running on 127.0.0.1:$PORT (pid $(cat "$PIDF"))"; exit 0
    fi
    "$VENV/bin/moto_server" -H 127.0.0.1 -p "$PORT" >"$LOG" 2>&1 &
    echo $! >"$PIDF"
    for _ in $(seq 1 300); do
      if curl -sf "http://127.0.0.1:$PORT/moto-api/" >/dev/null 2>&1; then
        echo "moto listening on 127.0.0.1:$PORT (pid $(cat "$PIDF"))"; exit 0
      fi
      sleep 0.1
    done
    echo "moto did not start; log:" >&2; cat "$LOG" >&2; exit 1
    ;;
  stop)
    if [ -f "$PIDF" ]; then
      kill "$(cat "$PIDF")" 2>/dev/null || true
      rm -f "$PIDF"
    fi
    ;;
  env)
    echo "export AWS_ENDPOINT_URL=http://127.0.0.1:$PORT"
    echo "export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_REGION=us-east-1 AWS_DEFAULT_REGION=us-east-1"
    echo "export S3_FORCE_PATH_STYLE=true"
    ;;
  create)
    AWS_ENDPOINT_URL="http://127.0.0.1:$PORT" AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing \
    AWS_DEFAULT_REGION=us-east-1 "$VENV/bin/python" - <<'PY'
import json, os
import boto3
ep = os.environ["AWS_ENDPOINT_URL"]
s3, sqs = boto3.client("s3", endpoint_url=ep), boto3.client("sqs", endpoint_url=ep)
s3.create_bucket(Bucket="fhe-batch-local")
dlq = sqs.create_queue(QueueName="fhe-batch-jobs-dlq")["QueueUrl"]
arn = sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
jobs = sqs.create_queue(QueueName="fhe-batch-jobs", Attributes={
    "VisibilityTimeout": "1800",
    "RedrivePolicy": json.dumps({"deadLetterTargetArn": arn, "maxReceiveCount": "5"})})["QueueUrl"]
print(f"export FHE_BATCH_BUCKET=fhe-batch-local JOBS_QUEUE_URL={jobs}")
PY
    ;;
  *)
    sed -n '2,10p' "$0"; exit 2 ;;
esac
