"""Offline SAM -> CloudFormation expansion (no credentials, no network), so cfn-lint can check
the expanded template: cfn-lint >= 1.5x validates SAM resources against the SAM schema only and
misses limits such as a Lambda timeout over 900 s or a bad GetAtt.

Usage: python sam_to_cfn.py template.yaml > expanded.json
"""
import json
import os
import sys

os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
from samtranslator.public.exceptions import InvalidDocumentException  # noqa: E402
from samtranslator.translator.transform import transform  # noqa: E402
from samtranslator.yaml_helper import yaml_parse  # noqa: E402


class OfflinePolicyLoader:
    """Stands in for IAM ListPolicies (only needed for managed-policy names)."""

    def load(self):
        return {}


def main(path):
    with open(path) as f:
        template = yaml_parse(f.read())
    for resource in template.get("Resources", {}).values():
        props = resource.get("Properties") or {}
        code = props.get("CodeUri")
        if resource.get("Type") == "AWS::Serverless::Function" and isinstance(code, str) \
                and not code.startswith("s3://"):
            props["CodeUri"] = "s3://placeholder-bucket/code.zip"
    try:
        expanded = transform(template, {}, OfflinePolicyLoader())
    except InvalidDocumentException as e:
        for cause in e.causes:
            print("SAM transform error:", cause.message, file=sys.stderr)
        sys.exit(1)
    json.dump(expanded, sys.stdout, indent=1)


if __name__ == "__main__":
    main(sys.argv[1])
