"""Mutants of the run machinery around the loop: the run's state, its folder, the metrics log
and train.py's loop (the format: mutants.py)."""

from mutants import mutant, CHECKPOINT, LOOP

# ----------------------------------------------------------------------------- anil/run/state.py
F = "anil/run/state.py"

mutant("state/best-on-ties", F,
       'accuracy <= self.best["val_accuracy"]',
       'accuracy < self.best["val_accuracy"]',
       "a later validation that only ties the best replaces it", LOOP)
mutant("state/window-loss-not-averaged", F,
       '{"loss": w["loss"] / w["count"],',
       '{"loss": w["loss"],',
       "the logged training loss is the sum over the window, not its mean",
       LOOP)
mutant("state/window-not-reset", F,
       "w, self.window = self.window, _empty_window()",
       "w = self.window",
       "the training window is never reset: each row averages from the start", LOOP)
mutant("state/inf-loss-passes", F,
       "if not math.isfinite(loss):",
       "if math.isnan(loss):",
       "an infinite loss is recorded instead of stopping the run", LOOP)
mutant("state/pending-never-saved", F,
       '"pending": self.finished < self.iteration,',
       '"pending": False,',
       "a checkpoint written during a validation says it is complete: the validation is skipped "
       "on resume", LOOP)
mutant("state/pending-not-restored", F,
       'finished=saved["iteration"] - int(saved["pending"]),',
       'finished=saved["iteration"],',
       "a resumed run forgets that its last validation was interrupted",
       LOOP)
mutant("state/seconds-restart", F,
       'seconds_before=saved["seconds"])',
       "seconds_before=0.0)",
       "a resumed run's clock restarts at zero", LOOP)

# ---------------------------------------------------------------------------- anil/run/run_folder.py
F = "anil/run/run_folder.py"

mutant("folder/overwrite-without-asking", F,
       "            if not overwrite:\n",
       "            if False:\n",
       "a new run replaces another run's files without --overwrite", LOOP)
mutant("folder/cleared-at-open", F,
       "        self._write_into(staging)\n",
       "        for name in self.names:\n            (self.path / name).unlink(missing_ok=True)\n",
       "--overwrite deletes the old run at once: a start stopped early loses it",
       f"{LOOP} tests/runs/test_run_safety.py -k before_its_first_checkpoint")
mutant("folder/never-committed", F,
       "            if name == \"checkpoint.pt\":\n                self.commit()\n",
       "",
       "an overwriting run never commits: its files are dropped when it ends", LOOP)
mutant("folder/swap-not-finished-on-open", F,
       "            if (self.path / SWAP / MANIFEST).is_file():\n                self._finish_swap()\n",
       "",
       "a replacement killed after its commit is dropped: both runs are lost",
       "tests/runs/test_overwrite_kill.py -k any_step")
mutant("folder/fresh-name-numbering", F,
       "path, n = Path(path), 2",
       "path, n = Path(path), 1",
       "the second default folder is <name>-1", LOOP)
mutant("folder/fresh-name-over-a-file", F,
       "while holds_run(candidate, names) or (candidate.exists() and not candidate.is_dir()):",
       "while holds_run(candidate, names):",
       "the default folder name may be an existing file", LOOP)
mutant("folder/summary-not-strict", F,
       "tmp.write_text(json.dumps(strict_json(obj), indent=1, allow_nan=False))",
       "tmp.write_text(json.dumps(obj, indent=1))",
       "summary.json written with NaN (not strict JSON)", LOOP)

# --------------------------------------------------------------------------- anil/run/metrics.py
F = "anil/run/metrics.py"

mutant("metrics/rows-not-strict", F,
       'f.write(json.dumps(strict_json(row), allow_nan=False) + "\\n")',
       'f.write(json.dumps(row) + "\\n")',
       "metrics rows written with NaN (not strict JSON)", CHECKPOINT)
mutant("metrics/truncate-keeps-later-rows", F,
       'kept = [r for r in read_metrics(self.path, damaged) if r["iteration"] <= iteration]',
       "kept = read_metrics(self.path, damaged)",
       "a resumed run keeps the rows logged after its checkpoint (duplicates)", CHECKPOINT)
mutant("metrics/truncate-drops-the-checkpoint-row", F,
       'if r["iteration"] <= iteration]',
       'if r["iteration"] < iteration]',
       "a resumed run drops the row of its checkpoint's own iteration", LOOP + " -k truncat")

# ---------------------------------------------------------------------------------- anil/train.py
F = "anil/train.py"

mutant("train/last-iteration-not-validated", F,
       "if args.val_every and (it % args.val_every == 0 or last):",
       "if args.val_every and it % args.val_every == 0:",
       "the last iteration is validated only when it is a multiple of --val-every", LOOP)
mutant("train/last-iteration-not-logged", F,
       'if it % args.log_every == 0 or "val_accuracy" in row or last:',
       'if it % args.log_every == 0 or "val_accuracy" in row:',
       "the last iteration gets no metrics row unless it is a multiple of --log-every",
       LOOP)
mutant("train/validation-not-logged", F,
       'if it % args.log_every == 0 or "val_accuracy" in row or last:',
       "if it % args.log_every == 0 or last:",
       "a validation off the log cadence gets no metrics row", LOOP)
mutant("train/last-iteration-no-checkpoint", F,
       "if (args.checkpoint_every and it % args.checkpoint_every == 0) or last:",
       "if args.checkpoint_every and it % args.checkpoint_every == 0:",
       "the last iteration is checkpointed only on the --checkpoint-every cadence",
       LOOP)
mutant("train/checkpoint-before-logged", F,
       "    state.finished = it\n"
       "    if (args.checkpoint_every and it % args.checkpoint_every == 0) or last:\n"
       "        save_checkpoint(run, state)\n"
       "        run.folder.draw_curve(",
       "    if (args.checkpoint_every and it % args.checkpoint_every == 0) or last:\n"
       "        save_checkpoint(run, state)\n"
       "        state.finished = it\n"
       "        run.folder.draw_curve(",
       "the checkpoint is saved before the iteration counts as logged: resume redoes its validation",
       LOOP)
mutant("train/test-weights-ignored", F,
       'if run.args.test_weights == "best" and best is not None:',
       "if best is not None:",
       "--test-weights last still tests the best-validated weights", LOOP)
mutant("train/best-head-not-loaded", F,
       'run.body.load_state_dict(best["body"]), run.head.load_state_dict(best["head"])',
       'run.body.load_state_dict(best["body"])',
       "the final test loads the best body but keeps the last head", LOOP)

# The outer step that meta_train writes out (tests/runs/test_outer_step.py records each Adam step).
OUTER = "tests/runs/test_outer_step.py"
mutant("train/loop-no-zero-grad", F,
       "            optimizer.zero_grad(set_to_none=True)\n",
       "",
       "the loop never clears .grad: every step adds the earlier steps' gradients", OUTER)
mutant("train/loop-reference-no-backward", F,
       "                loss.backward()\n",
       "                pass\n",
       "--strategy reference steps without a gradient (Adam sees none)", OUTER)
mutant("train/loop-batch-twice", F,
       "            images, labels = distributed.next_meta_batch(run.samplers[\"train\"], args.meta_batch, ctx)\n",
       "            images, labels = (distributed.next_meta_batch(run.samplers[\"train\"], args.meta_batch, ctx)\n"
       "                              if state.iteration % 2 == 0 else (images, labels))\n",
       "every other step reuses the previous meta-batch instead of sampling a new one", OUTER)
mutant("train/loop-no-average", F,
       "            loss, accuracy = distributed.average_gradients(ctx, run.parameters(), loss, accuracy)\n",
       "            loss, accuracy = float(loss), float(accuracy)\n",
       "under torchrun each process steps with its own share's gradient",
       "tests/runs/test_distributed.py -k torchrun_two_processes_match_one_process")

# ---------------------------------------------------------------- fixed episodes (evaluate.py)
mutant("episodes/labels-in-line-order", "data_prep/episodes.py",
       "np.asarray([paired[q] for q in query_files], np.int64)",
       "np.asarray(list(paired.values()), np.int64)",
       "query labels taken in class_labels.txt line order, not the sorted test/ order",
       "tests/data/test_episode_checks.py")
mutant("evaluate/population-standard-error", "anil/run/evaluate.py",
       "statistics.stdev(values) / math.sqrt(len(values))",
       "statistics.pstdev(values) / math.sqrt(len(values))",
       "the episodes' standard error with the population formula", "tests/data/test_episode_checks.py")
