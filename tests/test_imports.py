"""What each side of the service imports, checked in a fresh interpreter: the worker's side (what a Ray worker runs)
loads neither Optuna nor pandas nor the study's writer; the review side reads a study without Optuna."""

import json
import subprocess
import sys

WORKER_MODULES = ("configaformer_search.trial", "configaformer_search.train", "configaformer_search.probes",
                  "configaformer_search.data", "configaformer_search.candidate", "configaformer_search.steps",
                  "configaformer_search.devicegate")
HEAVY = ("optuna", "pandas", "configaformer_search.storage.store")


def loaded_after(code: str) -> dict:
    """Runs `code` in a fresh interpreter (this one's path and environment); returns which of HEAVY, and of
    'sqlalchemy', it left in sys.modules, and what the code put in `result`."""
    script = (f"import json, sys\nresult = None\n{code}\n"
              f"print(json.dumps({{'loaded': [m for m in {HEAVY + ('sqlalchemy',)!r} if m in sys.modules], 'result': result}}))")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def test_the_worker_side_loads_no_optuna_pandas_or_study_writer():
    """One interpreter (torch's import alone takes seconds): each module imported in turn, and what had loaded after
    it, so that a failure names the first module that brought one in."""
    code = "result = {}\n" + "".join(
        f"import {module}\nresult[{module!r}] = [m for m in {HEAVY!r} if m in sys.modules]\n" for module in WORKER_MODULES)
    got = loaded_after(code)
    assert got["result"] == {module: [] for module in WORKER_MODULES}
    assert got["loaded"] == []


def test_the_review_reads_a_study_without_optuna(tmp_path):
    from helpers import synthetic_run

    out, _ = synthetic_run(tmp_path, trials=6)
    url = f"sqlite:///{out / 'study.db'}"
    got = loaded_after("import configaformer_search.review\n"
                       "result = {'after import': 'optuna' in sys.modules}\n"
                       "from configaformer_search.review import build_review\n"
                       "from configaformer_search.storage import read_study\n"
                       f"study = read_study({url!r})\n"
                       "review = build_review(study)\n"
                       "result.update(trials=len(study.trials), front=len(review.front))\n"
                       "result['after reading'] = 'optuna' in sys.modules\n"
                       "import configaformer_search.storage.store\n"
                       "result['seen'] = 'optuna' in sys.modules")  # the check does see an import of Optuna
    assert got["result"]["after import"] is False and got["result"]["after reading"] is False
    assert got["result"]["trials"] == 6 and got["result"]["front"] >= 1  # it did read the study
    assert got["result"]["seen"] is True
