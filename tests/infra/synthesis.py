"""Synthesize the CDK app the way `cdk synth` does: cdk.json context + overrides, cdk-nag plugin on."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aws_cdk as cdk
from aws_cdk.assertions import Template
from cfnlint.api import lint_file

from app import build_app

REPO_ROOT = Path(__file__).resolve().parents[2]
CDK_JSON = json.loads((REPO_ROOT / "cdk.json").read_text())


@dataclass
class Synthesized:
    template: Template
    raw: dict[str, Any]
    outdir: Path
    validation: dict[str, Any]

    def resources(self, type_: str) -> dict[str, dict[str, Any]]:
        return {k: v for k, v in self.raw["Resources"].items() if v["Type"] == type_}

    def only(self, type_: str) -> dict[str, Any]:
        found = self.resources(type_)
        assert len(found) == 1, f"expected one {type_}, found {sorted(found)}"
        return next(iter(found.values()))["Properties"]


def synthesize(outdir: Path, **overrides: Any) -> Synthesized:
    """The app of app.py with cdk.json's context plus `overrides`; raises if cdk-nag finds errors."""
    context = {**CDK_JSON["context"], **overrides}
    app = cdk.App(context=context, outdir=str(outdir))
    stack = build_app(app)
    app.synth()
    template_file = outdir / f"{stack.stack_name}.template.json"
    return Synthesized(
        template=Template.from_stack(stack),
        raw=json.loads(template_file.read_text()),
        outdir=outdir,
        validation=json.loads((outdir / "validation-report.json").read_text()),
    )


def lint_errors(synth: Synthesized) -> list[str]:
    """cfn-lint errors in the synthesized template.

    Warnings are left out: the only ones are W3005, the redundant DependsOn CDK emits on Lambda roles.
    """
    matches = lint_file(synth.outdir / "WanBatch.template.json")
    return [str(m) for m in matches if m.rule.severity == "error"]
