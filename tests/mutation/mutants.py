"""Plausible bugs, each one exact text edit, and the tests that should notice it.

``python tests/mutation/run.py`` applies each edit to a scratch copy of the repository, runs the
named tests there, and reports whether they failed (the mutant is killed) or passed (it survived:
no test states the property the edit breaks).

One entry per mutant::

    mutant("<module>/<what>", "<file relative to the repository root>",
           "<exact original text: must occur exactly once in the file>",
           "<replacement>",
           "<the bug, one line>",
           "<pytest arguments: files, node ids, -k EXPR>",
           equivalent="<why no result can change>")   # only for an equivalent mutant

A mutant whose original text no longer occurs exactly once is an error, never a kill: edit or
delete it when the code it targets changes. An ``equivalent`` mutant is listed but not run (run.py
--check-equivalent runs it anyway and reports it if some test does fail).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Mutant:
    name: str
    file: str
    original: str
    replacement: str
    description: str
    tests: str
    equivalent: str | None = None


MUTANTS: list[Mutant] = []


def mutant(name, file, original, replacement, description, tests, equivalent=None):
    if any(m.name == name for m in MUTANTS):
        raise ValueError(f"two mutants are named {name!r}")
    if original == replacement:
        raise ValueError(f"mutant {name!r} changes nothing")
    MUTANTS.append(Mutant(name, file, original, replacement, description, tests, equivalent))


# Test selections shared by several mutants (the fastest tests that state the property).
SAMPLER = "tests/method/test_sampler.py"
MODEL = "tests/method/test_model.py"
DATA = "tests/method/test_data.py"
NIL = "tests/paper/test_analysis.py -k nil"
CKA = "tests/paper/test_analysis.py -k cka"
MAML = "tests/paper/test_maml.py"
CI95 = "tests/method/test_statistics.py"
GUARDS = "tests/data/test_prep_common.py tests/data/test_archives.py"
CIFAR = "tests/data/test_prep_cifar.py -k 'not train_py'"
OMNIGLOT = "tests/data/test_prep_omniglot.py"
CHECKPOINT = "tests/runs/test_checkpoint.py -k 'not fingerprint'"


# ------------------------------------------------------------------------------ anil/sampler.py
F = "anil/sampler.py"

mutant("sampler/support-is-query", F,
       "return support_query(self.images)[0], support_query(self.labels)[0]",
       "return support_query(self.images)[1], support_query(self.labels)[0]",
       "the support set returns the query images (odd positions)", SAMPLER)
mutant("sampler/query-labels-even", F,
       "return support_query(self.images)[1], support_query(self.labels)[1]",
       "return support_query(self.images)[1], support_query(self.labels)[0]",
       "query labels taken from the even positions", SAMPLER,
       equivalent="every class block holds one label and has even length 2K, so labels[0::2] "
                  "equals labels[1::2] element for element")
mutant("sampler/shared-label-permutation", F,
       "label_of = rng.permutation(self.ways)",
       "label_of = np.random.default_rng(self.seed).permutation(self.ways)",
       "one label permutation for every task of a seed (label order tied to class order)", SAMPLER)
mutant("sampler/inverse-label-permutation", F,
       "classes[label_of] = chosen",
       "classes[:] = chosen[label_of]",
       "the inverse permutation: other tasks than the documented function of (seed, task_id)", SAMPLER)
mutant("sampler/labels-in-class-order", F,
       "classes[label_of] = chosen",
       "classes[:] = chosen",
       "no permutation: label j always goes to the j-th smallest class", SAMPLER)
mutant("sampler/rotation-per-task", F,
       "rotations = rng.integers(0, 4, self.ways) if self.rotate",
       "rotations = np.full(self.ways, rng.integers(0, 4)) if self.rotate",
       "one rotation for the whole task instead of one per class", SAMPLER)
mutant("sampler/rotation-range", F,
       "rng.integers(0, 4, self.ways)",
       "rng.integers(0, 3, self.ways)",
       "rotations drawn from {0, 90, 180} degrees only", SAMPLER)
mutant("sampler/rotation-of-first-class", F,
       "torch.rot90(b, int(k), dims=(2, 3)) for b, k in zip(blocks, rotations)",
       "torch.rot90(b, int(rotations[0]), dims=(2, 3)) for b, k in zip(blocks, rotations)",
       "every class block rotated by the first class's k (task_indices reports others)", SAMPLER)
mutant("sampler/pool-cycles", F,
       "int(self.rng.integers(self.num_tasks))",
       "self.draws % self.num_tasks",
       "a fixed pool is cycled through in order instead of drawn uniformly", SAMPLER)
mutant("sampler/images-with-replacement", F,
       "rng.choice(self.split.counts[c], k2, replace=False)",
       "rng.choice(self.split.counts[c], k2, replace=True)",
       "the 2K images of a class drawn with replacement: support and query may share an image", SAMPLER)
mutant("sampler/eligible-with-k-images", F,
       "split.counts >= 2 * shots",
       "split.counts >= shots",
       "classes with fewer than 2K images are eligible", SAMPLER)
mutant("sampler/sorted-read-not-restored", F,
       "raw[order] = self.split.images[indices[order]]",
       "raw[:] = self.split.images[indices[order]]",
       "images read in sorted index order are not put back in class-block order", SAMPLER)
mutant("sampler/split-seeds-collide", F,
       "return seed * 3 + SPLIT_OFFSET[split]",
       "return seed + SPLIT_OFFSET[split]",
       "run seed 1's train tasks are run seed 0's validation tasks", SAMPLER)
mutant("sampler/pixel-scale", F,
       ".float().div_(255.0)",
       ".float().div_(256.0)",
       "pixels scaled by 1/256: white is not 1.0", SAMPLER)
mutant("sampler/rng-not-restored", F,
       '        self.rng.bit_generator.state = state["rng"]\n',
       "",
       "load_state_dict restores the draw count but not the pool's random state", SAMPLER)

# -------------------------------------------------------------------------------- anil/model.py
F = "anil/model.py"

mutant("model/running-stats", F,
       "affine=True, track_running_stats=False)",
       "affine=True, track_running_stats=True)",
       "batch norm keeps running statistics: eval mode no longer normalises with the task", MODEL)
mutant("model/bn-momentum", F,
       "affine=True, track_running_stats=False)",
       "affine=True, track_running_stats=False, momentum=0.5)",
       "another batch-norm momentum", MODEL,
       equivalent="momentum only updates running statistics, and none are kept")
mutant("model/relu-before-norm", F,
       "        x = self.conv(x)\n",
       "        x = torch.relu(self.conv(x))\n",
       "ReLU before batch norm (as well as after)", MODEL)
mutant("model/bn-weight-ones", F,
       "        nn.init.uniform_(self.norm.weight)  # learn2learn: BN weight ~ U(0, 1)\n",
       "",
       "batch-norm weights left at 1 instead of U(0, 1)", MODEL)
mutant("model/kaiming-conv", F,
       "nn.init.xavier_uniform_(self.conv.weight)",
       "nn.init.kaiming_uniform_(self.conv.weight)",
       "conv weights Kaiming- instead of Xavier-uniform", MODEL)
mutant("model/no-padding", F,
       "nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=True)",
       "nn.Conv2d(in_channels, out_channels, 3, padding=0, bias=True)",
       "3x3 convolutions without padding", MODEL)
mutant("model/pool-ceil", F,
       "side //= 2  # MaxPool2d(2) floors",
       "side = (side + 1) // 2  # MaxPool2d(2) floors",
       "feature size computed with ceiling division", MODEL)
mutant("model/head-bias-init", F,
       "    nn.init.zeros_(head.bias)\n",
       "",
       "head bias keeps nn.Linear's random init instead of zero", MODEL)

# --------------------------------------------------------------------------------- anil/data.py
F = "anil/data.py"

mutant("data/offsets-right", F,
       "np.searchsorted(labels, np.arange(num_classes + 1))",
       "np.searchsorted(labels, np.arange(num_classes + 1), side=\"right\")",
       "class offsets off by one class (searchsorted side='right')", DATA)
mutant("data/images-not-regrouped", F,
       "            images = images[order]\n",
       "            pass\n",
       "labels sorted into class blocks but images left in their original order", DATA)
mutant("data/no-memory-map", F,
       'mmap_mode="r" if mmap else None',
       "mmap_mode=None",
       "every split read whole into memory", DATA)

# -------------------------------------------------------------------------- anil/paper/nil.py
F = "anil/paper/nil.py"

mutant("nil/softmax-over-queries", F,
       "torch.softmax(cosine, dim=1)",
       "torch.softmax(cosine, dim=0)",
       "attention normalised over the queries instead of the support set", NIL)
mutant("nil/temperature", F,
       "torch.softmax(cosine, dim=1)",
       "torch.softmax(cosine / 0.1, dim=1)",
       "softmax temperature 0.1 instead of Matching Networks' 1", NIL)
mutant("nil/unnormalised-support", F,
       "F.normalize(support_features, dim=1).T",
       "support_features.T",
       "dot product with unnormalised support features instead of cosine", NIL)
mutant("nil/queries-are-support", F,
       "nil_probabilities(support_features, support_labels, query_features, ways)",
       "nil_probabilities(support_features, support_labels, support_features, ways)",
       "the support images are classified instead of the queries", NIL)

# -------------------------------------------------------------------------- anil/paper/cka.py
F = "anil/paper/cka.py"

mutant("cka/not-centred", F,
       "    x = x - x.mean(0, keepdim=True)\n",
       "",
       "Gram matrices not centred", CKA)
mutant("cka/centred-per-input", F,
       "x = x - x.mean(0, keepdim=True)",
       "x = x - x.mean(1, keepdim=True)",
       "centred over the features of each input instead of over inputs", CKA)
mutant("cka/denominator", F,
       "denominator = k.norm() * l.norm()",
       "denominator = k.norm() ** 2",
       "normalised by ||K||^2 instead of ||K|| ||L||", CKA)

# ------------------------------------------------------------------------- anil/paper/maml.py
F = "anil/paper/maml.py"

mutant("maml/first-order-not-detached", F,
       "grads = {k: g.detach() for k, g in grads.items()}",
       "grads = {k: g for k, g in grads.items()}",
       "first-order MAML keeps the second-order terms (missing .detach())", MAML)
mutant("maml/ascent", F,
       "fast = {k: fast[k] - step_size * grads[k] for k in fast}",
       "fast = {k: fast[k] + step_size * grads[k] for k in fast}",
       "inner loop steps up the gradient", MAML)
mutant("maml/support-odd", F,
       "return support_query(network_forward(body, head, params, images))[0]",
       "return support_query(network_forward(body, head, params, images))[1]",
       "inner loop adapts on the query positions", MAML)
mutant("maml/query-even", F,
       "return support_query(network_forward(body, head, params, images))[1]",
       "return support_query(network_forward(body, head, params, images))[0]",
       "outer loss scored on the support positions", MAML)
mutant("maml/meta-loss-sum", F,
       "return torch.stack(losses).mean(), torch.stack(accuracies).mean()",
       "return torch.stack(losses).sum(), torch.stack(accuracies).mean()",
       "meta-loss summed over the meta-batch instead of averaged", MAML)
mutant("maml/layer-index", F,
       'f"body.blocks.{int(layer[4:]) - 1}."',
       'f"body.blocks.{int(layer[4:])}."',
       "conv<i> names block i instead of block i-1", MAML)
mutant("maml/eval-keeps-graph", F,
       "    with torch.no_grad():\n        return task_loss(body, head, images, labels, step_size, steps, adapted=adapted,",
       "    if True:\n        return task_loss(body, head, images, labels, step_size, steps, adapted=adapted,",
       "test-time adaptation builds the outer graph (no torch.no_grad)", MAML,
       equivalent="the same arithmetic with or without a graph, and only a float (.item()) leaves "
                  "the function: no graph reaches the caller (it costs memory, changes no value)")

# ---------------------------------------------------------------- anil/evaluation.py: mean_ci95
F = "anil/evaluation.py"

mutant("ci95/no-sqrt-n", F,
       "float(1.96 * values.std(ddof=1) / math.sqrt(len(values)))",
       "float(1.96 * values.std(ddof=1))",
       "half-width 1.96 s instead of 1.96 s / sqrt(n)", CI95)
mutant("ci95/population-std", F,
       "values.std(ddof=1)",
       "values.std(ddof=0)",
       "population standard deviation instead of the sample one", CI95)
mutant("ci95/z-90", F,
       "float(1.96 * values.std",
       "float(1.645 * values.std",
       "z of a 90% interval", CI95)
mutant("ci95/population-std-over-n-minus-1", F,
       "values.std(ddof=1) / math.sqrt(len(values))",
       "values.std(ddof=0) / math.sqrt(len(values) - 1)",
       "population std divided by sqrt(n - 1)", CI95,
       equivalent="sqrt(SS/n) / sqrt(n-1) = sqrt(SS/(n-1)) / sqrt(n): the same number up to rounding")
mutant("ci95/one-value", F,
       "if len(values) < 2:",
       "if len(values) < 1:",
       "n = 1 goes through std(ddof=1)", CI95,
       equivalent="numpy returns nan for the std of one value (with a RuntimeWarning): the same "
                  "(mean, nan)")

# ------------------------------------------------------------------------- data_prep/common.py
F = "data_prep/common.py"

mutant("common/duplicate-in-split", F,
       '        if twice:\n'
       '            raise PrepError(f"{source}: the {split} split lists the class {twice[0]!r} twice")\n',
       "",
       "a class listed twice in one split is accepted", GUARDS)
mutant("common/splits-checked-separately", F,
       "    for split, names in splits.items():\n        twice",
       "    for split, names in splits.items():\n        seen = {}\n        twice",
       "the class-to-split record is reset per split: a class in two splits passes", GUARDS)
mutant("common/download-trusts-existing", F,
       "if dest.is_file() and (md5 is None or md5sum(dest) == md5):",
       "if dest.is_file():",
       "an existing download is reused without checking its md5", GUARDS)

# ----------------------------------------------------------------------- data_prep/archives.py
F = "data_prep/archives.py"

mutant("archives/drive-letter", F,
       ' or (path.parts and ":" in path.parts[0])',
       "",
       "Windows drive names (C:evil, C:/x) accepted", GUARDS)
mutant("archives/backslash", F,
       'PurePosixPath(name.replace("\\\\", "/"))',
       "PurePosixPath(name)",
       "backslash separators not normalised: ..\\up accepted", GUARDS)
mutant("archives/leading-dotdot-only", F,
       '".." in path.parts',
       'path.parts[:1] == ("..",)',
       "only a leading .. refused: a/../../up accepted", GUARDS)
mutant("archives/dotdot-substring", F,
       '".." in path.parts',
       '".." in name',
       "any name containing '..' refused (a..b/c is a plain file)", GUARDS)
mutant("archives/absolute", F,
       "if path.is_absolute() or ",
       "if ",
       "absolute member names accepted", GUARDS)
mutant("archives/tar-resolve", F,
       '        if not (root / m.name).resolve().is_relative_to(root):\n'
       '            _check_member(archive, "../" + m.name)\n',
       "",
       "tar members not checked to resolve inside dest (a link already there)", GUARDS)
mutant("archives/hard-links", F,
       "is_link=m.issym() or m.islnk()",
       "is_link=m.issym()",
       "tar hard links not named as links", GUARDS)
mutant("archives/zip-link-mode", F,
       "is_link=(mode & 0o170000) == 0o120000",
       "is_link=mode == 0o120000",
       "zip symlinks detected only with mode exactly 0o120000", GUARDS)

# ------------------------------------------------------------------------ data_prep/pickles.py
F = "data_prep/pickles.py"

mutant("pickles/unpickler-falls-back", F,
       'raise _NotPlain(f"it refers to {module}.{name}")',
       "return super().find_class(module, name)",
       "the safe unpickler falls back to the default lookup: any global allowed", GUARDS)
mutant("pickles/unpickler-allows-numpy", F,
       "        if (module, name) not in SAFE_GLOBALS:\n",
       '        if module.startswith("numpy") and (module, name) not in SAFE_GLOBALS:\n'
       "            return super().find_class(module, name)\n"
       "        if (module, name) not in SAFE_GLOBALS:\n",
       "any numpy global allowed (numpy.load, numpy.testing's runstring)", GUARDS)

# ----------------------------------------------------------------------- data_prep/cifar100.py
F = "data_prep/cifar100.py"

mutant("cifar100/transposed", F,
       "transpose(0, 2, 3, 1)",
       "transpose(0, 3, 2, 1)",
       "images transposed (rows and columns swapped)", CIFAR)
mutant("cifar100/rows-as-hwc", F,
       "data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)",
       "data.reshape(-1, 32, 32, 3)",
       "a row read as interleaved RGB instead of three planes", CIFAR)
mutant("cifar100/train-file-only", F,
       'for f in ("train", "test")]',
       'for f in ("train",)]',
       "only the train file: 500 of each class's 600 images", CIFAR)
mutant("cifar100/coarse-for-fine", F,
       "labels = label_of[data.fine]",
       "labels = label_of[data.coarse]",
       "classes selected by superclass index instead of fine label", CIFAR)
mutant("cifar100/archive-md5-unchecked", F,
       '    verify_md5(archive, MD5[ARCHIVE], f"delete it and {HOW_TO_GET}")\n',
       "",
       "the archive's md5 is not checked", CIFAR)
mutant("cifar100/extracted-md5-unchecked", F,
       '                verify_md5(folder / f, MD5[f], f"delete {folder} and {HOW_TO_GET}")\n',
       "                pass\n",
       "the files of an extracted folder are not checked", CIFAR)

# ----------------------------------------------------------------------- data_prep/omniglot.py
F = "data_prep/omniglot.py"

mutant("omniglot/not-inverted", F,
       "PREPROCESS = Preprocess(SIZE, channels=1, invert=True)",
       "PREPROCESS = Preprocess(SIZE, channels=1, invert=False)",
       "strokes left dark on white", OMNIGLOT)
mutant("omniglot/bilinear", "data_prep/images.py",  # the conversion Omniglot's PREPROCESS names
       'RESAMPLE = {"lanczos": Image.Resampling.LANCZOS}',
       'RESAMPLE = {"lanczos": Image.Resampling.BILINEAR}',
       "bilinear instead of LANCZOS resize", OMNIGLOT)
mutant("omniglot/unsorted-shuffle", F,
       "order = sorted(names)",
       "order = list(names)",
       "the MAML split shuffles the zip's member order (filesystem-dependent)", OMNIGLOT,
       equivalent="prepare() passes read_characters' keys, which are already sorted; the sort in "
                  "maml_split only protects other callers")
mutant("omniglot/val-in-test", F,
       '"test": order[n_train + n_val:]',
       '"test": order[n_train:]',
       "split leakage: validation characters also in the test split", OMNIGLOT)
mutant("omniglot/rotation-direction", F,
       "np.rot90(images, k, axes=(2, 3))",
       "np.rot90(images, k, axes=(3, 2))",
       "the class named rot90 is rotated by 270 degrees", OMNIGLOT)
mutant("omniglot/md5-unchecked", F,
       "    if actual == MD5[name]:\n        return\n",
       "    if True:\n        return\n",
       "the zips' md5 is not checked", OMNIGLOT)

# --------------------------------------------------------------------- anil/run/checkpoint.py
F = "anil/run/checkpoint.py"

mutant("checkpoint/write-in-place", F,
       'tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")',
       "tmp = path",
       "written in place: a failed write destroys the previous checkpoint", CHECKPOINT)
mutant("checkpoint/numpy-pos", F,
       'n["pos"], n["has_gauss"]',
       '0, n["has_gauss"]',
       "numpy's position in its key stream not restored", CHECKPOINT)
mutant("checkpoint/torch-rng", F,
       '    torch.set_rng_state(state["torch"])\n',
       "",
       "torch's CPU random state not restored", CHECKPOINT)
mutant("checkpoint/unsafe-load", F,
       'torch.load(path, map_location="cpu", weights_only=True)',
       'torch.load(path, map_location="cpu", weights_only=False)',
       "checkpoints unpickled with arbitrary globals", CHECKPOINT)
mutant("checkpoint/no-crc", F,
       "damaged = archive.testzip()",
       "damaged = None",
       "member CRCs not checked: flipped bytes in the weights load silently", CHECKPOINT)
mutant("checkpoint/differences-reversed", F,
       'f"{k}: {saved.get(k, missing)!r} → {current.get(k, missing)!r}"',
       'f"{k}: {current.get(k, missing)!r} → {saved.get(k, missing)!r}"',
       "a changed setting reported as current -> saved", CHECKPOINT)

# ------------------------------------------------------------- data_prep/archives.py: size limits
F = "data_prep/archives.py"

mutant("archives/zip-resolve", F,
       '                    if not target.resolve().is_relative_to(root):  # through a link in dest\n'
       '                        _check_member(archive, "../" + info.filename)\n',
       "",
       "zip members not checked to resolve inside dest (a link already there)", GUARDS)
mutant("archives/declared-member-size", F,
       "        if size > self.limit.member:\n            raise self._over(name, \"member\")\n"
       "        self.declared += size",
       "        self.declared += size",
       "a member's declared size is not checked against the per-member limit", GUARDS)
mutant("archives/copied-bytes-uncounted", F,
       "        self.copied += block\n",
       "",
       "bytes copied are not counted against the whole archive's limit (a lying header passes)",
       GUARDS)

# ============================================================================================
# The core modules: the algorithm, the fast path, evaluation, distributed training, the loop.
# ============================================================================================
MATH = "tests/method/test_math.py"
FAST_GRAD = ("tests/method/test_fast.py -k 'reference_meta_gradient or head_loop or batch_norm_statistics "
             "or after_adam or accumulates or float32_precision'")
FAST_EVAL = "tests/method/test_fast.py -k 'task_accuracies or accuracies_of or episode'"
DIST_UNIT = "tests/runs/test_distributed.py -k 'without_a_group or stand_in or divide'"  # no processes
DIST = "tests/runs/test_distributed.py -k 'train_like_one or sharded'"  # 2 spawned processes
LOOP = "tests/runs/test_train_loop.py"  # TrainState, RunFolder, end_of_iteration, in milliseconds

# ---------------------------------------------------------------------------- anil/algorithm.py
F = "anil/algorithm.py"

mutant("algorithm/ce-sign", F,
       "return -torch.log_softmax(logits, -1).gather(",
       "return torch.log_softmax(logits, -1).gather(",
       "cross-entropy without its minus sign: the inner loop climbs the loss", MATH)
mutant("algorithm/ce-sum", F,
       ".gather(-1, labels.unsqueeze(-1)).mean()",
       ".gather(-1, labels.unsqueeze(-1)).sum()",
       "cross-entropy summed over the samples instead of averaged (inner step scaled by n)", MATH)
mutant("algorithm/ce-softmax-dim", F,
       "-torch.log_softmax(logits, -1)",
       "-torch.log_softmax(logits, 0)",
       "log-softmax over the samples instead of the classes", MATH)
mutant("algorithm/head-loss-detached-features", F,
       "    logits = functional_call(head, params, (features,))\n    return cross_entropy(",
       "    logits = functional_call(head, params, (features.detach(),))\n    return cross_entropy(",
       "the support features are detached in the inner loss: the mixed ∂²L/∂θ∂w terms vanish", MATH)
mutant("algorithm/inner-ascent", F,
       "params = {k: params[k] - step_size * grads[k] for k in params}",
       "params = {k: params[k] + step_size * grads[k] for k in params}",
       "the inner loop steps up the gradient", MATH)
mutant("algorithm/inner-step-size", F,
       "params = {k: params[k] - step_size * grads[k] for k in params}",
       "params = {k: params[k] - 0.5 * step_size * grads[k] for k in params}",
       "inner steps of α/2", MATH)
mutant("algorithm/only-weight-adapts", F,
       "params = {k: params[k] - step_size * grads[k] for k in params}",
       'params = {k: params[k] - step_size * grads[k] if k == "weight" else params[k] for k in params}',
       "the inner loop updates W but not b", MATH)
mutant("algorithm/first-order-not-detached", F,
       "            grads = {k: g.detach() for k, g in grads.items()}\n",
       "            grads = {k: g for k, g in grads.items()}\n",
       "first-order ANIL keeps the second-order terms (missing .detach())", MATH)
mutant("algorithm/first-order-detaches-params", F,
       "            grads = {k: g.detach() for k, g in grads.items()}\n",
       "            params = {k: p.detach() for k, p in params.items()}\n",
       "first order detaches the adapted head instead of the gradient: no meta-gradient reaches w",
       MATH)
mutant("algorithm/steps-plus-one", F,
       "    for _ in range(steps):\n        grads = grad_fn(",
       "    for _ in range(steps + 1):\n        grads = grad_fn(",
       "one inner step too many", MATH)
mutant("algorithm/steps-minus-one", F,
       "    for _ in range(steps):\n        grads = grad_fn(",
       "    for _ in range(1, steps):\n        grads = grad_fn(",
       "one inner step too few", MATH)
mutant("algorithm/scores-support", F,
       "logits = functional_call(head, adapted, (query_features,))",
       "logits = functional_call(head, adapted, (support_features,))",
       "the adapted head is scored on the support set instead of the query set", MATH)
mutant("algorithm/accuracy-on-support-labels", F,
       "accuracy = (logits.argmax(-1) == query_labels)",
       "accuracy = (logits.argmax(-1) == support_labels)",
       "query predictions compared with the support labels", MATH)
mutant("algorithm/body-per-half", F,
       "    support_features, query_features = support_query(\n"
       "        interleaved_task_features(body, images, batch_norm))\n",
       "    support_features, query_features = (body(support_query(images)[0]), "
       "body(support_query(images)[1]))\n",
       "the body runs separately on support and query: batch norm no longer sees the whole task",
       MATH)
mutant("algorithm/swapped-support-query", F,
       "    support_features, query_features = support_query(\n",
       "    query_features, support_features = support_query(\n",
       "adapted on the query set, scored on the support set", MATH)
mutant("algorithm/meta-loss-sum", F,
       "    return torch.stack(losses).mean(), torch.stack(accuracies).mean()",
       "    return torch.stack(losses).sum(), torch.stack(accuracies).mean()",
       "meta-loss summed over the meta-batch instead of averaged", MATH)
mutant("algorithm/no-zero-grad", F,
       "    optimizer.zero_grad(set_to_none=True)\n    loss, accuracy = meta_loss(",
       "    loss, accuracy = meta_loss(",
       "the reference step never clears .grad: gradients of earlier steps accumulate", FAST_GRAD)
mutant("algorithm/zero-grad-after-backward", F,
       "    loss.backward()\n    return outer_step(",
       "    loss.backward()\n    optimizer.zero_grad(set_to_none=True)\n    return outer_step(",
       "gradients cleared between backward() and the optimizer step: nothing moves", FAST_GRAD)
mutant("algorithm/average-skipped", F,
       "        average([*(p.grad for p in params), stats])\n",
       "        pass\n",
       "data-parallel gradients not averaged across processes", DIST_UNIT)
mutant("algorithm/stats-not-averaged", F,
       "        average([*(p.grad for p in params), stats])\n",
       "        average([p.grad for p in params])\n",
       "the reported loss and accuracy are rank 0's share only, not the meta-batch's", DIST_UNIT)

# ------------------------------------------------------------------ anil/sampler.py: support_query
F = "anil/sampler.py"

mutant("sampler/support-query-offsets-swapped", F,
       "return x[index + (slice(0, None, 2),)], x[index + (slice(1, None, 2),)]",
       "return x[index + (slice(1, None, 2),)], x[index + (slice(0, None, 2),)]",
       "support_query returns (odd, even): support and query exchanged everywhere", SAMPLER)
mutant("sampler/support-query-dim-ignored", F,
       "index = (slice(None),) * dim",
       "index = ()",
       "support_query always splits dimension 0 (a batch of tasks is split by task)", SAMPLER)

# ---------------------------------------------------------------------------------- anil/fast.py
F = "anil/fast.py"

mutant("fast/bn-stats-across-tasks", F,
       "dim=(1, 3, 4), correction=0",
       "dim=(0, 1, 3, 4), correction=0",
       "batched body: batch-norm statistics over every task of the group", FAST_GRAD)
mutant("fast/bn-stats-per-image", F,
       "dim=(1, 3, 4), correction=0",
       "dim=(3, 4), correction=0",
       "batched body: statistics per image (instance norm) instead of per task", FAST_GRAD)
mutant("fast/bn-unbiased-var", F,
       "dim=(1, 3, 4), correction=0",
       "dim=(1, 3, 4), correction=1",
       "batched body: unbiased variance (BatchNorm2d normalises with the biased one)", FAST_GRAD)
mutant("fast/bn-eps-outside-sqrt", F,
       "torch.rsqrt(var + norm.eps)",
       "1 / (var.sqrt() + norm.eps)",
       "batched body: ε added to the standard deviation instead of the variance", FAST_GRAD)
mutant("fast/bn-shift-sign", F,
       "(norm.bias.view(1, 1, -1, 1, 1) - mean * scale)",
       "(norm.bias.view(1, 1, -1, 1, 1) + mean * scale)",
       "batched body: the mean added instead of subtracted", FAST_GRAD)
mutant("fast/batched-features-layout", F,
       "z = x.flatten(1).view(b, m, -1)",
       "z = x.flatten(1).view(m, b, -1).transpose(0, 1)",
       "batched body: features regrouped as [images, tasks] (tasks mixed up)", FAST_GRAD)
mutant("fast/task-body-over-the-group", F,
       "torch.stack([call(x) for x in images])",
       "call(images.flatten(0, 1)).view(len(images), images.shape[1], -1)",
       "per-task body: one call over the whole group, batch norm across tasks", FAST_GRAD)
mutant("fast/autocast-float32", F,
       'if precision == "bfloat16":',
       'if precision in ("bfloat16", "float32"):',
       "float32 precision runs the body under bfloat16 autocast too", FAST_GRAD)
mutant("fast/autocast-float16", F,
       "return torch.autocast(images.device.type, dtype=torch.bfloat16)",
       "return torch.autocast(images.device.type, dtype=torch.float16)",
       "--precision bfloat16 autocasts to float16", "tests/method/test_fast.py -k bfloat16")
mutant("fast/in-dims-query-labels", F,
       "in_dims=(None, None, 0, 0, 0, 0, None, None, None)",
       "in_dims=(None, None, 0, 0, 0, None, None, None, None)",
       "torch.func head loop: query labels not split by task", FAST_GRAD)
mutant("fast/closed-form-no-1-over-n", F,
       "- one_hot) / n",
       "- one_hot)",
       "closed form: ∇L without the 1/n of the mean loss", FAST_GRAD)
mutant("fast/closed-form-query-one-hot", F,
       "one_hot = F.one_hot(support_labels, ways)",
       "one_hot = F.one_hot(query_labels, ways)",
       "closed form: the inner gradient uses the query labels", FAST_GRAD)
mutant("fast/closed-form-bias-mean", F,
       "residual.sum(1, keepdim=True)",
       "residual.mean(1, keepdim=True)",
       "closed form: ∇b divided by n twice", FAST_GRAD)
mutant("fast/closed-form-bias-sum-dim", F,
       "residual.sum(1, keepdim=True)",
       "residual.sum(2, keepdim=True)",
       "closed form: ∇b summed over the classes instead of the samples (always ~0)", FAST_GRAD)
mutant("fast/closed-form-not-detached", F,
       "grad_w, grad_b = grad_w.detach(), grad_b.detach()",
       "grad_w, grad_b = grad_w, grad_b",
       "closed form: first order keeps the second-order terms", FAST_GRAD)
mutant("fast/closed-form-bias-not-detached", F,
       "grad_w, grad_b = grad_w.detach(), grad_b.detach()",
       "grad_w, grad_b = grad_w.detach(), grad_b",
       "closed form: first order detaches ∇W but not ∇b", FAST_GRAD)
mutant("fast/head-gradients-mean", F,
       "torch.autograd.grad(scale * losses.sum(),",
       "torch.autograd.grad(losses.mean(),",
       "each group's gradient averaged over the group instead of scaled by 1/B", FAST_GRAD)
mutant("fast/scale-per-group", F,
       "scale=1.0 / meta_batch,",
       "scale=1.0 / len(x),",
       "head gradients scaled by 1/(group size) instead of 1/B", FAST_GRAD)
mutant("fast/features-not-detached", F,
       "detached = features.detach().to(params[\"weight\"].dtype)",
       "detached = features.to(params[\"weight\"].dtype)",
       "the body's features reach the head loop undetached", FAST_GRAD,
       equivalent="head_gradients detaches its features again before the head loop, so the "
                  "graph and every value are the same")
mutant("fast/last-group-dropped", F,
       "for start in range(0, meta_batch, group):",
       "for start in range(0, meta_batch - 1, group):",
       "meta_gradient skips the last task when groups do not divide the meta-batch", FAST_GRAD)
mutant("fast/head-grads-overwritten", F,
       "            head_grads[k] += g_params[k]\n",
       "            head_grads[k] = g_params[k]\n",
       "head gradients of the last group only", FAST_GRAD)
mutant("fast/head-grad-replaces", F,
       "p.grad = head_grads[name] if p.grad is None else p.grad + head_grads[name]",
       "p.grad = head_grads[name]",
       "meta_gradient overwrites the head's .grad instead of accumulating into it (the body's "
       "accumulates)", FAST_GRAD)
mutant("fast/loss-mean-of-groups", F,
       "return torch.cat(losses).mean().item(), torch.cat(accuracies).mean().item()",
       "return torch.stack([l.mean() for l in losses]).mean().item(), torch.cat(accuracies).mean().item()",
       "reported loss is the mean of group means (unequal groups weigh more)", FAST_GRAD)
mutant("fast/train-step-no-zero-grad", F,
       "    optimizer.zero_grad(set_to_none=True)\n    loss, accuracy = meta_gradient(",
       "    loss, accuracy = meta_gradient(",
       "the fast step never clears .grad: gradients of earlier steps accumulate", FAST_GRAD)
mutant("fast/train-step-no-average", F,
       "    return outer_step(optimizer, loss, accuracy, average)",
       "    return outer_step(optimizer, loss, accuracy)",
       "the fast step ignores the data-parallel all-reduce",
       DIST_UNIT)
mutant("fast/default-gpu-per-task-body", F,
       'return Speed(strategy="vmap", batch_body=True, channels_last=True, head_loop=head_loop)',
       'return Speed(strategy="vmap", batch_body=False, channels_last=True, head_loop=head_loop)',
       "the GPU default runs the body task by task", "tests/method/test_fast.py -k default_speeds")
mutant("fast/default-ignores-head-loop", F,
       'return Speed(strategy="chunk", chunk_size=8, channels_last=True, head_loop=head_loop)',
       'return Speed(strategy="chunk", chunk_size=8, channels_last=True)',
       "the CPU default speed drops the requested head loop", "tests/method/test_fast.py -k default_speeds")

# ---------------------------------------------------------------------------- anil/evaluation.py
F = "anil/evaluation.py"

mutant("evaluation/split-tasks-not-images", F,
       "support_query(features, dim=1), support_query(labels, dim=1))",
       "support_query(features, dim=0), support_query(labels, dim=0))",
       "task_accuracies splits the batch of tasks instead of each task's images", FAST_EVAL)
mutant("evaluation/adapt-on-query", F,
       "        _, accuracies = HEAD_LOOP[head_loop](head, params, support_features, support_labels,\n"
       "                                             query_features, query_labels, step_size, steps)",
       "        _, accuracies = HEAD_LOOP[head_loop](head, params, query_features, query_labels,\n"
       "                                             support_features, support_labels, step_size, steps)",
       "task_accuracies adapts on the query set and scores the support set", FAST_EVAL)
mutant("evaluation/body-with-grad", F,
       "    with torch.inference_mode():\n        features = features_fn(images)",
       "    if True:\n        features = features_fn(images)",
       "evaluation runs the body with autograd recording", FAST_EVAL,
       equivalent="only memory and time change: the features are the same numbers, and the head "
                  "loop under no_grad returns accuracies (argmax comparisons) with no graph")
mutant("evaluation/last-partial-group-dropped", F,
       "for start in range(0, len(task_ids), tasks_per_call):",
       "for start in range(0, len(task_ids) - tasks_per_call + 1, tasks_per_call):",
       "the last, partial group of tasks is never evaluated", FAST_EVAL)
mutant("evaluation/task-ids-sorted", F,
       "    task_ids = list(task_ids)\n",
       "    task_ids = sorted(set(task_ids))\n",
       "accuracies_of returns the accuracies in sorted task-id order, not the order asked", FAST_EVAL)
mutant("evaluation/progress-lags", F,
       "progress(len(accuracies), len(task_ids))",
       "progress(start, len(task_ids))",
       "progress reports the tasks done before the group, never reaching the total", FAST_EVAL)
mutant("evaluation/episode-order", F,
       "for z in task_features(body, support_images, query_images, batch_norm))",
       "for z in task_features(body, query_images, support_images, batch_norm))",
       "episode_accuracy takes query features for support ones", FAST_EVAL)
mutant("evaluation/episode-bn-per-half", F,
       "for z in task_features(body, support_images, query_images, batch_norm))",
       "for z in task_features(body, support_images, query_images, \"separate\"))",
       "episode_accuracy: batch norm over support and query separately", FAST_EVAL)

# ------------------------------------------------- batch-norm modes: anil/model.py, fast, maml
BN = "tests/method/test_batch_norm.py"

mutant("model/support-statistics-of-all", "anil/model.py",
       "torch.var_mean(x[:statistics_of], dim=(0, 2, 3)",
       "torch.var_mean(x, dim=(0, 2, 3)",
       "batch_norm='support': statistics over support and query, not the support alone", BN)
mutant("model/support-statistics-constant", "anil/model.py",
       "torch.rsqrt(var + self.norm.eps)",
       "torch.rsqrt(var.detach() + self.norm.eps)",
       "batch_norm='support': σ²_S held constant in the meta-gradient", BN)
mutant("model/separate-one-call", "anil/model.py",
       "        return call(support), call(query)\n",
       "        return call(torch.cat([support, query])).split(len(support))\n",
       "batch_norm='separate': one body call over support and query (task-wide statistics)", BN)
mutant("fast/separate-one-group", "anil/fast.py",
       '"separate": (2 * b, None)',
       '"separate": (b, None)',
       "batched body, batch_norm='separate': one statistic per task instead of per half", BN)
mutant("fast/support-statistics-of-all", "anil/fast.py",
       '"support": (b, m // 2)',
       '"support": (b, None)',
       "batched body, batch_norm='support': statistics over the whole task", BN)
mutant("maml/query-pass-task-statistics", "anil/paper/maml.py",
       '{"statistics_of": len(support)}',
       "{}",
       "MAML, batch_norm='support': the query pass normalised over support and query", BN)

# ---------------------------------------------------------------------- anil/run/distributed.py
F = "anil/run/distributed.py"

mutant("distributed/share-start", F,
       "return slice(ctx.rank * b, (ctx.rank + 1) * b)",
       "return slice(ctx.rank, (ctx.rank + 1) * b)",
       "a process's share starts at r instead of r·b (shares overlap)", DIST_UNIT)
mutant("distributed/gather-row-major", F,
       "in_order = torch.stack(gathered).T.reshape(-1)[:num_tasks]",
       "in_order = torch.stack(gathered).reshape(-1)[:num_tasks]",
       "gathered accuracies read rank by rank instead of back in task order", DIST_UNIT)
mutant("distributed/average-not-divided", F,
       "    flat /= ctx.world_size\n",
       "",
       "the all-reduce sums the gradients without dividing by P", DIST_UNIT)
mutant("distributed/own-ids-only", F,
       "    task_ids = [sampler.next_task_id() for _ in range(meta_batch)]\n"
       "    tasks = [sampler.task(i) for i in task_ids[mine]]",
       "    task_ids = [sampler.next_task_id() for _ in range(mine.stop - mine.start)]\n"
       "    tasks = [sampler.task(i) for i in task_ids]",
       "each process draws only its own B/P task ids: every rank trains on the same tasks", DIST_UNIT)
mutant("distributed/evaluation-ids", F,
       "range(ctx.rank, num_tasks, ctx.world_size)",
       "range(ctx.rank, num_tasks)",
       "sharded evaluation: each process scores every task from its rank on", DIST)

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
       '"pending": self.logged < self.iteration,',
       '"pending": False,',
       "a checkpoint written during a validation says it is complete: the validation is skipped "
       "on resume", LOOP)
mutant("state/pending-not-restored", F,
       'logged=saved["iteration"] - int(saved["pending"]),',
       'logged=saved["iteration"],',
       "a resumed run forgets that its last validation was interrupted",
       LOOP)
mutant("state/seconds-restart", F,
       'seconds_before=saved["seconds"])',
       "seconds_before=0.0)",
       "a resumed run's clock restarts at zero", LOOP)

# ---------------------------------------------------------------------------- anil/run/folder.py
F = "anil/run/folder.py"

mutant("folder/overwrite-without-asking", F,
       "            if not overwrite:\n",
       "            if False:\n",
       "a new run replaces another run's files without --overwrite", LOOP)
mutant("folder/cleared-at-open", F,
       "            self._replace_old = True\n",
       "            for file in self.files.values():\n                file.unlink(missing_ok=True)\n",
       "--overwrite deletes the old run at once: a start stopped early loses it",
       LOOP)
mutant("folder/cleared-on-every-write", F,
       "                self._replace_old = False\n",
       "",
       "--overwrite clears the folder again at every write", LOOP)
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
       "    state.logged = it\n"
       "    if (args.checkpoint_every and it % args.checkpoint_every == 0) or last:\n"
       "        save_checkpoint(run, state)\n"
       "        run.folder.draw_curve(",
       "    if (args.checkpoint_every and it % args.checkpoint_every == 0) or last:\n"
       "        save_checkpoint(run, state)\n"
       "        state.logged = it\n"
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
