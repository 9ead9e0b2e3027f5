"""Prints the fault suite's figures after the run (the cases test_faults.py recorded)."""

import sys


def pytest_terminal_summary(terminalreporter):
  module = next((m for name, m in sys.modules.items() if name.endswith("test_faults")
                 and hasattr(m, "RESULTS")), None)
  rows = getattr(module, "RESULTS", [])
  if not rows:
    return
  write = terminalreporter.write_line
  write("")
  write("fault injection: case | SIGKILLed | identical parameters | clean metrics")
  for r in rows:
    write(f"  {r['case']} | {'yes' if r['killed'] else 'no'} | "
          f"{'yes' if r['identical'] else 'NO'} | {'yes' if r['clean_metrics'] else 'NO'}")
  killed = sum(r["killed"] for r in rows)
  good = sum(r["identical"] and r["clean_metrics"] for r in rows)
  write(f"{len(rows)} cases ({killed} runs SIGKILLed): {good} of {len(rows)} ended with "
        "parameters bit-identical to an uninterrupted run and each metrics row once")
