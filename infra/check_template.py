"""Checks of template.yaml that CloudFormation and cfn-lint cannot express:

- the job queue's visibility timeout is at least 6x the worker timeout, for every allowed worker
  timeout (the queue reads it from a mapping keyed by the timeout parameter);
- the dead-letter limit is 5 receives and the worker reports partial batch failures;
- the ingest trigger only fires on inbox/*.fheb (no recursive triggers from results/ or jobs/);
- the worker cannot delete objects and the status function cannot write;
- ingest, worker and dead-letter functions may publish job ends to both SNS topics and put them
  on the EventBusName bus (the bus named in their environment);
- every function logs to a stack log group with a retention, every alarm has an action, and
  inbox/, results/ and jobs/ expire;
- ingest reads the worker's timeout from the same parameter as the worker (chunk sizing);
- a tenant role (infra/tenant-role.yaml) reaches only its tenant's prefixes (and reads models/),
  and is named with the prefix the status function reads tenants from;
- each function's S3 grants equal what its code was recorded to need
  (tests/fixtures/permissions.json, written from tests/integration/permissions.rs).
Exits non-zero with a message on the first violation.
"""
import json
import os
import sys

from samtranslator.yaml_helper import yaml_parse

# What each function's code needs, recorded by the Rust test
# tests/integration/permissions.rs from every store call it makes.
PERMISSIONS = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "permissions.json")
FUNCTIONS = {
    "ingest": "IngestFunction",
    "worker": "WorkerFunction",
    "status": "StatusFunction",
    "deadletter": "DeadLetterFunction",
}


def fail(msg):
    print("template check failed:", msg, file=sys.stderr)
    sys.exit(1)


def statements(fn):
    for policy in fn["Properties"].get("Policies", []):
        if isinstance(policy, dict):
            yield from policy.get("Statement", [])


def actions(fn):
    out = set()
    for stmt in statements(fn):
        acts = stmt.get("Action", [])
        out.update([acts] if isinstance(acts, str) else acts)
    return out


def s3_grants(fn):
    """(action, key prefix) pairs a function's S3 statements grant; "" is the bucket itself."""
    out = set()
    for stmt in statements(fn):
        acts = stmt.get("Action", [])
        acts = [acts] if isinstance(acts, str) else acts
        res = stmt.get("Resource", [])
        res = res if isinstance(res, list) else [res]
        for a in acts:
            if not a.startswith("s3:"):
                continue
            for r in res:
                arn = r.get("Fn::Sub", "") if isinstance(r, dict) else str(r)
                bucket, _, key = arn.partition("}/")
                if not key and "/" not in arn.split(":::", 1)[-1]:
                    out.add((a, ""))
                else:
                    out.add((a, key.rstrip("*")))
    return out


def check_permissions(res):
    """Each function is granted exactly the S3 access its code was recorded to need."""
    with open(PERMISSIONS) as f:
        needed = json.load(f)
    for name, logical in FUNCTIONS.items():
        want = {tuple(g) for g in needed[name]}
        have = s3_grants(res[logical])
        if have - want:
            fail(f"{logical} is granted more than its code uses: {sorted(have - want)}")
        if want - have:
            fail(f"{logical} lacks grants its code needs: {sorted(want - have)}")


TENANT_ROLE = os.path.join(os.path.dirname(__file__), "tenant-role.yaml")
BUCKET_ARN = "arn:${AWS::Partition}:s3:::${ServiceStack}-${AWS::AccountId}-${AWS::Region}"


def check_tenant_role(t):
    """Every S3 grant of the tenant role is confined to inbox/, jobs/, results/ or keys/ of
    ${Tenant}, except reading models/; listing is conditioned on those prefixes."""
    env = t["Globals"]["Function"]["Environment"]["Variables"]
    if env.get("FHE_BATCH_TENANT_ROLE_PREFIX") != {"Fn::Sub": "${AWS::StackName}-tenant-"}:
        fail("the functions must read tenant role names as <stack>-tenant-")
    if env.get("FHE_BATCH_TENANCY") != {"Ref": "Tenancy"}:
        fail("the functions must read the tenancy from the Tenancy parameter")
    role = yaml_parse(open(TENANT_ROLE).read())["Resources"]["TenantRole"]["Properties"]
    if role["RoleName"] != {"Fn::Sub": "${ServiceStack}-tenant-${Tenant}"}:
        fail("the tenant role must be named <stack>-tenant-<tenant>")
    own = {f"{BUCKET_ARN}/{p}/${{Tenant}}/*" for p in ("inbox", "jobs", "results", "keys")}
    for policy in role["Policies"]:
        for stmt in policy["PolicyDocument"]["Statement"]:
            acts = stmt["Action"] if isinstance(stmt["Action"], list) else [stmt["Action"]]
            res = stmt["Resource"] if isinstance(stmt["Resource"], list) else [stmt["Resource"]]
            arns = [r.get("Fn::Sub") if isinstance(r, dict) else r for r in res]
            for a in acts:
                if not a.startswith("s3:"):
                    if a not in ("lambda:InvokeFunctionUrl", "lambda:InvokeFunction"):
                        fail(f"tenant role grants {a}")
                    continue
                if a == "s3:ListBucket":
                    prefixes = stmt.get("Condition", {}).get("StringLike", {}).get("s3:prefix", [])
                    subs = {p.get("Fn::Sub") if isinstance(p, dict) else p for p in prefixes}
                    allowed = {f"{p}/${{Tenant}}/*" for p in ("inbox", "jobs", "results", "keys")}
                    if arns != [BUCKET_ARN] or not subs or not subs <= allowed | {"models/*"}:
                        fail(f"tenant role lists beyond its prefixes: {sorted(map(str, subs))}")
                    continue
                for arn in arns:
                    model_read = a == "s3:GetObject" and arn == f"{BUCKET_ARN}/models/*"
                    if arn not in own and not model_read:
                        fail(f"tenant role grants {a} on {arn}")
                    if a not in ("s3:GetObject", "s3:PutObject"):
                        fail(f"tenant role grants {a}")
                    if a == "s3:PutObject" and not (arn.endswith("/inbox/${Tenant}/*") or arn.endswith("/keys/${Tenant}/*")):
                        fail(f"tenant role may write {arn}")


def main(path):
    t = yaml_parse(open(path).read())
    res, params = t["Resources"], t["Parameters"]
    table = t["Mappings"]["VisibilityByWorkerTimeout"]
    allowed = params["WorkerTimeout"]["AllowedValues"]
    for timeout in allowed:
        vis = table[str(timeout)]["Seconds"]
        if vis < 6 * int(timeout):
            fail(f"visibility {vis}s < 6 x worker timeout {timeout}s")
    if set(map(str, allowed)) != set(table):
        fail("the visibility mapping must cover exactly the allowed worker timeouts")
    ingest_env = res["IngestFunction"]["Properties"]["Environment"]["Variables"]
    if ingest_env.get("FHE_BATCH_WORKER_TIMEOUT_SECONDS") != {"Ref": "WorkerTimeout"}:
        fail("ingest must read the worker timeout from the WorkerTimeout parameter")
    if res["WorkerFunction"]["Properties"]["Timeout"] != {"Ref": "WorkerTimeout"}:
        fail("the worker timeout must be the WorkerTimeout parameter")
    if res["JobsQueue"]["Properties"]["RedrivePolicy"]["maxReceiveCount"] != 5:
        fail("maxReceiveCount must be 5")
    ev = res["WorkerFunction"]["Properties"]["Events"]["Chunks"]["Properties"]
    if "ReportBatchItemFailures" not in ev.get("FunctionResponseTypes", []):
        fail("worker must report batch item failures")
    rules = res["IngestFunction"]["Properties"]["Events"]["Upload"]["Properties"]["Filter"]["S3Key"]["Rules"]
    if {(r["Name"], r["Value"]) for r in rules} != {("prefix", "inbox/"), ("suffix", ".fheb")}:
        fail("ingest must trigger on inbox/*.fheb only")
    if any("Delete" in a for a in actions(res["WorkerFunction"])):
        fail("the worker must not delete objects")
    if any(a not in ("s3:GetObject", "s3:ListBucket") for a in actions(res["StatusFunction"])):
        fail("the status function must only read")
    for stmt in statements(res["IngestFunction"]):
        if "s3:GetObject" in stmt.get("Action", []):
            if any("results/" in str(r) for r in stmt.get("Resource", [])):
                fail("ingest must not read results")
    check_permissions(res)
    check_tenant_role(t)
    for logical in ("IngestFunction", "WorkerFunction", "DeadLetterFunction"):
        topics = {
            p["SNSPublishMessagePolicy"]["TopicName"]["Fn::GetAtt"][0]
            for p in res[logical]["Properties"]["Policies"]
            if isinstance(p, dict) and "SNSPublishMessagePolicy" in p
        }
        if topics != {"SuccessTopic", "ErrorTopic"}:
            fail(f"{logical} must publish job ends to SuccessTopic and ErrorTopic")
        buses = [
            p["Fn::If"]
            for p in res[logical]["Properties"]["Policies"]
            if isinstance(p, dict) and "Fn::If" in p
        ]
        if not any(
            b[0] == "HasEventBus"
            and b[1].get("EventBridgePutEventsPolicy", {}).get("EventBusName") == {"Ref": "EventBusName"}
            for b in buses
        ):
            fail(f"{logical} must be allowed to put job-end events on the EventBusName bus")
    env = t["Globals"]["Function"]["Environment"]["Variables"]
    if env.get("FHE_BATCH_EVENT_BUS") != {"Ref": "EventBusName"}:
        fail("the functions must read the event bus from the EventBusName parameter")
    dl = res["DeadLetterFunction"]["Properties"]["Events"]["DeadLetters"]["Properties"]
    if dl["Queue"] != {"Fn::GetAtt": ["JobsDeadLetterQueue", "Arn"]}:
        fail("the dead-letter function must consume the job queue's dead-letter queue")
    if "sqs:ChangeMessageVisibility" not in actions(res["WorkerFunction"]):
        fail("the worker must be able to schedule retries (sqs:ChangeMessageVisibility)")
    for logical in FUNCTIONS.values():
        group = res[logical]["Properties"].get("LoggingConfig", {}).get("LogGroup", {}).get("Ref")
        if not group or "RetentionInDays" not in res.get(group, {}).get("Properties", {}):
            fail(f"{logical} must log to a group of the stack with a retention")
    for name, r in res.items():
        if r["Type"] == "AWS::CloudWatch::Alarm" and not r["Properties"].get("AlarmActions"):
            fail(f"alarm {name} has no action")
    rules = res["Bucket"]["Properties"]["LifecycleConfiguration"]["Rules"]
    expiring = {r.get("Prefix") for r in rules if "ExpirationInDays" in r}
    if not {"inbox/", "results/", "jobs/"} <= expiring:
        fail(f"inbox/, results/ and jobs/ must expire (expiring: {sorted(map(str, expiring))})")
    print(
        f"template checks passed ({len(allowed)} worker timeouts, visibility >= 6x, "
        "S3 grants equal the recorded needs of ingest, worker, status and deadletter; "
        "the tenant role stays in its prefixes)"
    )


if __name__ == "__main__":
    main(sys.argv[1])
