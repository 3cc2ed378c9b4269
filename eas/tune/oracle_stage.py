"""Stage 3b (`run.py tune --oracle`, rank 0): the oracle for the super-network the search just tuned.

Before the fine-tune starts from fresh adapters, every attention is skipped alone and the
super-network scored, in eval mode (no dropout, so no random draw: the fine-tune is unchanged):
- loss on the whole validation split (the data the bandit's reward reads);
- loss and accuracy on a fixed test subset: every ORACLE_STRIDE-th test example (600 of AID-20's
  2,400), which neither the search nor the fine-tune reads;
then the greedy oracle K-set (validation loss), and, when there are few enough, every K-set's
validation loss. oracle.json holds it all; the report takes the summary.
"""
from __future__ import annotations

import json
import time

from eas.oracle import agreement, all_sets, greedy_set, skip_one_losses
from eas.search import score_subnets
from eas.tune.evaluate import predict
from eas.tune.session import Session

ORACLE_STRIDE = 4


def run_oracle(s: Session) -> dict:
    t0 = time.monotonic()
    s.model.eval()
    try:
        result = _measure(s)
    finally:
        s.model.train()
    s.timings["oracle_s"] = time.monotonic() - t0
    s.folder.write_text("oracle.json", json.dumps(result, indent=1) + "\n")
    return result


def _measure(s: Session) -> dict:
    bs, task = s.cfg.eval_batch_size, s.task
    val_loss = _mean_loss(s, [s.batches.prepare(task.val[i:i + bs]) for i in range(0, len(task.val), bs)])
    test = task.test[::ORACLE_STRIDE]
    test_loss = _mean_loss(s, [s.batches.prepare(test[i:i + bs]) for i in range(0, len(test), bs)])
    val_one = skip_one_losses(val_loss, s.target)
    test_one = skip_one_losses(test_loss, s.target)
    oracle_set, path = greedy_set(val_loss, s.target, s.k, first=val_one)
    searched = s.chosen()
    none_val, none_test = score_subnets(val_loss, [()], s.target)[0], score_subnets(test_loss, [()], s.target)[0]
    accs = score_subnets(lambda: _accuracy(s, test), [(), *((i,) for i in range(s.n_units))], s.target)
    accuracy = dict(zip(["none", *map(str, range(s.n_units))], accs))
    every = all_sets(val_loss, s.target, s.k)
    prefs = s.search.scores.tolist()
    return {
        "val_examples": len(task.val), "test_examples": len(test), "test_stride": ORACLE_STRIDE,
        "val_loss_none": none_val, "test_loss_none": none_test,
        "val_loss_skip_one": val_one, "test_loss_skip_one": test_one, "test_accuracy_skip_one": accuracy,
        "oracle_set": list(oracle_set), "oracle_path_val_loss": path, "searched_set": list(searched),
        "preferences": prefs,
        "vs_val": agreement(prefs, val_one, searched, oracle_set),
        "vs_test_loss": agreement(prefs, test_one, searched, oracle_set),
        "vs_test_accuracy": agreement(prefs, [-accuracy[str(i)] for i in range(s.n_units)], searched, oracle_set),
        "all_sets_val_loss": None if every is None else [[list(k), v] for k, v in sorted(every.items(),
                                                                                          key=lambda kv: kv[1])],
    }


def _mean_loss(s: Session, batches):
    """The summed token loss over `batches` divided by their supervised tokens, of the current sub-network."""
    batches = [b for b in batches if b]

    def loss() -> float:  # called through score_subnets, which holds torch.no_grad
        total, count = 0.0, 0
        for b in batches:
            part, n = s.batches.loss(s.model, b)
            total, count = total + float(part), count + n
        return total / count
    return loss


def _accuracy(s: Session, examples) -> float:
    """Test accuracy of the current sub-network (called through score_subnets, like the losses)."""
    kept, answers = predict(s, s.model, examples, f"oracle skip={list(s.target.current())}")
    return s.task.score(answers, kept)["accuracy"]
