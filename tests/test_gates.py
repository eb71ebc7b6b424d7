"""analysis/gates.py on written logs with known answers: each gate passes and fails where its rule says."""
import json

import pytest

from analysis import gates

TASKS = ("metaworld_handle_press_side", "metaworld_handle_pull", "metaworld_reach")


def write_run(folder, config, records):
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(json.dumps(config))  # JSON is YAML: read as the stage's config.yaml
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def teacher(folder, decline):
    """Losses 20.0 at update 1,500 falling by `decline` x 20 per 300 updates (reach only), logged every 100 updates,
    with an alternating +-0.2 on every task (the noise of a logged row)."""
    records = []
    for s in range(100, 3001, 100):
        noise = 0.2 * (-1) ** (s // 100)
        records.append({"step": s, **{f"train/loss/{t}": 20.0 + noise - (decline * 20 * (s - 1500) / 300
                                                                          if t == "metaworld_reach" else 0.0)
                                      for t in TASKS}})
    records[0]["train/loss/metaworld_reach"] = 50.0  # before the last 1,500 updates: does not count
    write_run(folder, {"pretrain_iterations": 3000}, records)


def student(folder, teacher_r2, share, near):
    config = {"distill_weight": "auto", "distill_share": 0.5, "prefill": 500, "steps": 2000,
              "teacher_model_path": str(folder.parents[3] / "teachers/A/teacher.pt")}
    records = [{"step": 334, "probe/student_r2": 0.9, "probe/teacher_r2": 0.0},  # before 1,000 steps: not G1's
               {"step": 500, "train/distill/grad_share": 9.0},  # prefill: left out of G2
               {"step": 1000, "probe/student_r2": 0.30, "probe/teacher_r2": teacher_r2},
               *({"step": s, "train/distill/grad_share": share, "train/distill/relevance_entropy": 1.0,
                  "train/distill/relevance_argmax_metaworld_handle_press_side": near / 2,
                  "train/distill/relevance_argmax_metaworld_handle_pull": near / 2} for s in (1000, 1500, 2000))]
    write_run(folder, config, records)


def test_each_gate_passes_and_fails_by_its_rule(tmp_path):
    teacher(tmp_path / "teachers/A", decline=0.005)   # 0.5% per 300 updates: plateaued (A1's rule: <= 1%)
    teacher(tmp_path / "teachers/B", decline=0.02)    # 2%: still learning
    student(tmp_path / "students/handle_press/gate/seed200", teacher_r2=0.36, share=0.4, near=0.7)
    student(tmp_path / "students/handle_press/gate/seed201", teacher_r2=0.33, share=1.2, near=0.6)
    result = gates.gates(tmp_path)
    assert result["teachers"]["A"]["pass"] and not result["teachers"]["B"]["pass"]
    reach = result["teachers"]["B"]["tasks"]["metaworld_reach"]
    value = lambda step: 20.0 + 0.2 * (-1) ** (step // 100) - 0.4 * (step - 1500) / 300
    tail_mean = sum(value(step) for step in range(1600, 3001, 100)) / 15
    assert reach["slope"] == pytest.approx(-0.4 / tail_mean, rel=0.01) and not reach["pass"], reach
    assert result["teachers"]["B"]["tasks"]["metaworld_handle_pull"]["pass"]  # the noise alone does not fail it
    # the registered windows rule, reported beside: (2,400, 2,700] against (2,700, 3,000]
    early, late = (sum(value(step) for step in steps) / 3 for steps in ((2500, 2600, 2700), (2800, 2900, 3000)))
    assert reach["change"] == pytest.approx(abs(late - early) / early), reach
    a, b = result["students"]["seed200"], result["students"]["seed201"]
    assert a["G1"]["pass"] and not b["G1"]["pass"]                 # 0.36 >= 0.30 + 0.05; 0.33 is not
    assert a["G2"]["median"] == 0.4 and a["G2"]["pass"] and not b["G2"]["pass"]   # [0.25, 1.0]
    assert abs(a["G3"]["near_share"] - 0.7) < 1e-9 and a["G3"]["rows"] == 2   # the rows after step 1,000
    assert a["G3"]["pass"] and not b["G3"]["pass"]
    assert result["verdict"] == {"G0": False, "G1": False, "G2": False, "G3": False} and not result["pass"]


def test_the_report_is_written_and_a_missing_folder_is_one_line(tmp_path, capsys):
    teacher(tmp_path / "archive/teachers/A", decline=0.0)  # the teachers kept with the study's own archive
    student(tmp_path / "students/handle_press/gate/seed200", teacher_r2=0.5, share=0.5, near=0.9)
    out = tmp_path / "GATES.md"
    assert gates.main([str(tmp_path), "--teachers", str(tmp_path / "archive/teachers"), "--out", str(out)]) == 0
    text = out.read_text()
    assert "**All gates: pass.**" in text and "| seed200 | A | 0.500 | 0.300 | pass |" in text, text
    assert json.loads((tmp_path / "gates.json").read_text())["pass"] is True
    capsys.readouterr()
    assert gates.main([str(tmp_path / "absent"), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "gate sweep" in err[0], err
