"""Mutants of Lake et al.'s one-shot protocol with the authors' files: the minimal background
sets read together, the optional evaluation zip, and a dataset without a test split (the
format: mutants.py)."""

from mutants import mutant

LAKE = "tests/data/test_prep_omniglot_lake.py"

mutant("omniglot/shared-not-compared", "data_prep/omniglot_files.py",
       "if _drawings(out.drawings[key]) != _drawings(members):",
       "if False:",
       "a character in both minimal sets is kept once without checking that both hold the same drawings",
       LAKE + " -k differ")
mutant("omniglot/evaluation-required", "data_prep/omniglot.py",
       "require(folder, wanted if full else zips)",
       "require(folder, wanted)",
       "a minimal background set cannot be prepared without images_evaluation.zip", LAKE + " -k alone")
mutant("omniglot/missing-before-corrupt", "data_prep/omniglot.py",
       "    for name in present:\n        check_archive(folder / name, name)\n    require(folder, wanted if full else zips)\n",
       "    require(folder, wanted if full else zips)\n    for name in present:\n        check_archive(folder / name, name)\n",
       "a missing zip is reported while another one present is corrupt", LAKE + " -k corrupt")
mutant("folder/test-share-zero-refused", "data_prep/folder.py",
       "0 <= values[2] < 1",
       "0 < values[2] < 1",
       "--split with a test share of 0 is refused", LAKE + " -k share")
