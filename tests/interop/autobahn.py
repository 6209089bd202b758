"""Autobahn|Testsuite conformance of wsgate, run with kosoku (Autobahn's own case files on
Python 3, Rust runner), one run per mode: echo (wsgate answers), relay and passthrough (an
independent Python `websockets` echo server behind wsgate).

Usage: autobahn.py --out DIR --golden FILE [--update-golden [--golden-runs N]] MODE=URL ...

Cases 1-10 run (12.x and 13.x are permessage-deflate, which wsgate does not negotiate). A mode
passes when no case FAILED (OK, NON-STRICT and INFORMATIONAL pass; so does UNIMPLEMENTED for a
compression case, should one run) and every case's behavior is the one recorded for that mode in
the golden file.

Golden entries are a behavior ("OK") or, for a case whose behavior depends on timing, the list of
behaviors seen when it was recorded (["NON-STRICT", "OK"]): --update-golden runs each mode
--golden-runs times (default 3) and records what it saw. A case whose behavior differs from the
golden file is run again, alone, up to 4 times; a change that does not come back to a recorded
behavior fails the mode, one that does is reported as timing-dependent.

One race is inherent to the modes with an upstream (relay, passthrough): in the cases that send a
good message and then a bad frame (3.2-3.4, 4.1.3-4.1.5, 4.2.3-4.2.5, 5.15), the verdict is OK
when the upstream's echo of the good message gets back before the connection is failed, and
NON-STRICT when it does not (Autobahn's NON-STRICT sequence is the OK one without those echoes).
In those modes, for those cases, OK and NON-STRICT count as the same behavior; in echo mode
they do not.

A mode whose route answers the upgrade with 501 (not implemented yet) is reported and skipped,
unless the golden file has it. Reports in Autobahn's format (index.json and one page per case)
go to DIR/<mode>/.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import dataclasses
import json
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from kosoku import FailureError, run_fuzzingclient
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

try:  # kosoku's own Autobahn-format report writer (what its CLI uses); reports are a bonus
    from kosoku._report import write_reports
except ImportError:  # pragma: no cover
    write_reports = None

EXCLUDE = ["12.*", "13.*"]
PASSING = {"OK", "NON-STRICT", "INFORMATIONAL"}
MODE_TIMEOUT = 420  # seconds for one run of a mode; kosoku's own per-case limits are shorter
CONCURRENCY = 2
RERUNS = 4
RACY_MODES = {"relay", "passthrough"}  # an upstream answers: echoes race the failed connection

# Runs the given case ids (all of cases 1-10 for None) and returns kosoku's CaseResults. This
# module drives servers with kosoku's fuzzingclient; autobahn_client.py plugs in a fuzzingserver
# run instead and shares the rest (verdicts, golden file, re-runs).
Runner = Callable[[list[str] | None], Awaitable[list]]


def echo_race(expected: dict) -> bool:
    """True when the case's NON-STRICT outcome is its OK outcome minus trailing echoed messages."""
    strict, lenient = expected.get("OK"), expected.get("NON-STRICT")
    if not isinstance(strict, list) or not isinstance(lenient, list) or len(lenient) >= len(strict):
        return False
    return strict[: len(lenient)] == lenient and all(e[0] == "message" for e in strict[len(lenient):])


def case_key(case_id: str) -> tuple[int, ...]:
    return tuple(int(p) for p in case_id.split("."))


def accepted(entry: str | list[str] | None) -> set[str]:
    if entry is None:
        return set()
    return {entry} if isinstance(entry, str) else set(entry)


async def probe(url: str) -> int | None:
    """The HTTP status a plain upgrade gets when it is refused, None when it opens."""
    try:
        async with connect(url, open_timeout=10, compression=None):
            return None
    except InvalidStatus as e:
        return e.response.status_code


async def run_cases(url: str, cases: list[str] | None = None) -> list:
    try:
        return await asyncio.wait_for(
            run_fuzzingclient(url, cases, None if cases else EXCLUDE, concurrency=CONCURRENCY),
            MODE_TIMEOUT,
        )
    except FailureError as failure:
        return failure.results


def fuzzingclient(url: str) -> Runner:
    return lambda cases: run_cases(url, cases)


def not_passed(results: list) -> list[str]:
    failed = []
    for r in sorted(results, key=lambda r: case_key(r.case_id)):
        behavior = r.behavior.value
        compression = r.case_id.split(".")[0] in ("12", "13")
        if compression and behavior == "UNIMPLEMENTED":
            continue
        if not r.passed or behavior not in PASSING:
            failed.append(
                f"{r.case_id}: behavior={behavior} close={r.behavior_close.value}"
                f" (remote close {r.remote_close_code} {r.remote_close_reason!r}):"
                f" {r.result} / {r.result_close}\n      case: {r.description}"
                f"\n      expected: {r.expectation}"
            )
    return failed


async def run_mode(
    mode: str, url: str, out: Path, runs: int, runner: Runner, racy_mode: bool, probe_it: bool
) -> dict:
    """`url` names what is tested (and is probed for a 501 first when `probe_it`)."""
    if probe_it and await probe(url) == 501:
        return {"mode": mode, "skipped": f"{url} answers 501: not implemented yet"}
    started = time.monotonic()
    seen: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    first: dict[str, str] = {}
    racy: set[str] = set()
    failed: list[str] = []
    for i in range(runs):
        results = await runner(None)
        if i == 0:
            if write_reports is not None and results:
                write_reports(results, str(out / mode))
            first = {r.case_id: r.behavior.value for r in results}
        for r in results:
            seen[r.case_id][r.behavior.value] += 1
            if racy_mode and echo_race(r.expected or {}):
                racy.add(r.case_id)
        failed += [f"(run {i + 1}) {line}" if runs > 1 else line for line in not_passed(results)]
    cases = dict(sorted(first.items(), key=lambda kv: case_key(kv[0])))
    return {
        "mode": mode,
        "url": url,
        "cases": cases,
        "seen": {k: dict(v) for k, v in sorted(seen.items(), key=lambda kv: case_key(kv[0]))},
        "failed": failed,
        "racy": sorted(racy, key=case_key),
        "seconds": time.monotonic() - started,
    }


async def compare(
    mode: str, runner: Runner, got: dict[str, str], want: dict | None, racy: set[str], golden: Path
) -> tuple[list[str], list[str]]:
    """(changes that stayed, changes that went back to a recorded behavior when run again)."""

    def allowed(case_id: str) -> set[str]:
        a = accepted(want.get(case_id))
        if case_id in racy and a & {"OK", "NON-STRICT"}:
            a |= {"OK", "NON-STRICT"}
        return a

    if want is None:
        return [
            f"no golden entry for mode {mode!r}: record it with"
            " `tests/interop/run.sh --update-golden` (after checking the run) and commit"
            f" tests/interop/{golden.name}"
        ], []
    changed = [c for c in sorted(set(got) | set(want), key=case_key) if got.get(c) not in allowed(c)]
    history = {c: [got.get(c, "(absent)")] for c in changed}
    pending = [c for c in changed if c in want and c in got]
    for _ in range(RERUNS):
        if not pending:
            break
        rerun = {r.case_id: r.behavior.value for r in await runner(pending)}
        for c in pending:
            history[c].append(rerun.get(c, "(absent)"))
        pending = [c for c in pending if rerun.get(c) not in allowed(c)]
    stayed, flapped = [], []
    for c in changed:
        line = f"{c}: golden {want.get(c, '(absent)')} -> now {' then '.join(history[c])}"
        (stayed if c not in want or c not in got or c in pending else flapped).append(line)
    return stayed, flapped


def golden_entry(counts: dict[str, int]) -> str | list[str]:
    return next(iter(counts)) if len(counts) == 1 else sorted(counts)


@dataclasses.dataclass
class Mode:
    name: str
    url: str  # what is tested, as printed
    runner: Runner
    racy: bool  # OK and NON-STRICT are one behavior in the echo-race cases
    probe: bool = False  # skip the mode when `url` answers 501
    # Problems the runner saw besides Autobahn's verdicts (read after the runs and re-runs).
    issues: Callable[[], list[str]] = lambda: []


ABOUT = (
    "Autobahn|Testsuite behaviors of wsgate per mode (cases 1-10, run by kosoku);"
    " a list holds the behaviors a timing-dependent case showed over the recording"
    " runs. tests/interop/run.sh fails on any other behavior. Regenerate with"
    " tests/interop/run.sh --update-golden."
)


def add_common_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--golden", required=True, type=Path)
    parser.add_argument("--update-golden", action="store_true")
    parser.add_argument("--golden-runs", type=int, default=3)


async def check(modes: list[Mode], args: argparse.Namespace, label: str, about: str) -> int:
    """Runs each mode, judges it (verdicts, golden file, re-runs) or records it; 0 when all pass."""
    golden = json.loads(args.golden.read_text()) if args.golden.exists() else {}
    runs_per_mode = max(1, args.golden_runs) if args.update_golden else 1
    ok = True
    summary = []
    runs = []
    updated: list[str] = []
    for m in modes:
        mode, url = m.name, m.url
        times = f", {runs_per_mode} runs to record" if runs_per_mode > 1 else ""
        print(f"-- {label} {mode}: {url} (cases 1-10, {CONCURRENCY} at a time{times})", flush=True)
        run = await run_mode(mode, url, args.out, runs_per_mode, m.runner, m.racy, m.probe)
        runs.append(run)
        if "skipped" in run:
            if mode in golden:
                ok = False
                print(f"   FAIL: {run['skipped']}, but the golden file has {len(golden[mode])} cases for it")
                summary.append(f"{label} {mode}: FAIL (now 501, golden expects it to work)")
            else:
                print(f"   skipped: {run['skipped']}")
                summary.append(f"{label} {mode}: skipped (501 not implemented)")
            continue
        counts = collections.Counter(run["cases"].values())
        shown = ", ".join(f"{n} {b}" for b, n in sorted(counts.items(), key=lambda x: -x[1]))
        print(f"   {len(run['cases'])} cases in {run['seconds']:.1f}s: {shown}", flush=True)
        problems = []
        if run["failed"]:
            problems.append(f"{len(run['failed'])} not passed")
            print(f"   {len(run['failed'])} cases did not pass:")
            for line in run["failed"]:
                print(f"    {line}")
        if not run["cases"]:
            problems.append("no case ran")
        varied = {c: v for c, v in run["seen"].items() if len(v) > 1}
        if varied:
            print(f"   {len(varied)} cases varied between runs: "
                  + "; ".join(f"{c} {v}" for c, v in varied.items()))
        if args.update_golden:
            if not problems and not m.issues():
                golden[mode] = {c: golden_entry(v) for c, v in run["seen"].items()}
                updated.append(mode)
                print("   recorded in the golden file")
            else:
                print("   NOT recorded in the golden file (it must pass first)")
        elif run["cases"]:  # with none, "no case ran" says it all
            racy = set(run["racy"])
            if racy:
                differ = [c for c in run["racy"] if golden.get(mode, {}).get(c) is not None
                          and run["cases"].get(c) not in accepted(golden[mode][c])]
                print(f"   {len(racy)} echo-race cases (OK = NON-STRICT here): {', '.join(run['racy'])}"
                      + (f"; {len(differ)} differ from the golden file by that alone: {', '.join(differ)}" if differ else ""))
            stayed, flapped = await compare(mode, m.runner, run["cases"], golden.get(mode), racy, args.golden)
            if flapped:
                print(f"   {len(flapped)} cases changed, then came back to their recorded behavior"
                      " when run again (timing-dependent; not a failure):")
                for line in flapped:
                    print(f"    {line}")
            if stayed:
                problems.append(f"{len(stayed)} changes against the golden file")
                print(f"   {len(stayed)} changes against {args.golden.name}:")
                for line in stayed:
                    print(f"    {line}")
        issues = m.issues()
        if issues:
            problems.append(f"{len(issues)} other problems")
            print(f"   {len(issues)} other problems:")
            for line in issues:
                print(f"    {line}")
        if problems:
            ok = False
        verdict = "ok" if not problems else "FAIL (" + "; ".join(problems) + ")"
        summary.append(f"{label} {mode}: {verdict}: {len(run['cases'])} cases, {shown}")

    if args.update_golden:
        if updated:
            doc = {"_about": about}
            doc.update({m: golden[m] for m in sorted(k for k in golden if not k.startswith("_"))})
            text = json.dumps(doc, indent=1)
            # One line per case even where the entry is a list.
            text = text.replace('[\n   "', '["').replace('",\n   "', '", "').replace('"\n  ]', '"]')
            args.golden.write_text(text + "\n")
            print(f"wrote {args.golden}: {', '.join(updated)} updated")
        else:
            print("golden file not written: no mode passed")

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.json").write_text(json.dumps(runs, indent=1) + "\n")
    for line in summary:
        print(line)
    return 0 if ok else 1


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(parser)
    parser.add_argument("modes", nargs="+", metavar="MODE=URL")
    args = parser.parse_args()
    modes = []
    for spec in args.modes:
        mode, url = spec.split("=", 1)
        modes.append(Mode(mode, url, fuzzingclient(url), racy=mode in RACY_MODES, probe=True))
    return await check(modes, args, "autobahn", ABOUT)


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
