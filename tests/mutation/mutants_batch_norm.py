"""Mutants of the batch-norm modes (batch_norm="task", "separate", "support"; the format:
mutants.py)."""

from mutants import mutant

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
