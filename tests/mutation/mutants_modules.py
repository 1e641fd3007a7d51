"""Mutants of the modules around the core: sampler, model, data, the paper's MAML/NIL/CKA, data
preparation and checkpoints (the format: mutants.py)."""

from mutants import (mutant, SAMPLER, MODEL, DATA, NIL, CKA, MAML, CI95, GUARDS, CIFAR, OMNIGLOT,
                     CHECKPOINT)

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
mutant("omniglot/unsorted-shuffle", "data_prep/omniglot_splits.py",
       "order = sorted(names)",
       "order = list(names)",
       "the MAML split shuffles the zip's member order (filesystem-dependent)", OMNIGLOT,
       equivalent="prepare() passes read_characters' keys, which are already sorted; the sort in "
                  "maml_split only protects other callers")
mutant("omniglot/val-in-test", "data_prep/omniglot_splits.py",
       '"test": order[n_train + n_val:]',
       '"test": order[n_train:]',
       "split leakage: validation characters also in the test split", OMNIGLOT)
mutant("omniglot/rotation-direction", F,
       "np.rot90(images, k, axes=(2, 3))",
       "np.rot90(images, k, axes=(3, 2))",
       "the class named rot90 is rotated by 270 degrees", OMNIGLOT)
mutant("omniglot/md5-unchecked", "data_prep/omniglot_files.py",
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
