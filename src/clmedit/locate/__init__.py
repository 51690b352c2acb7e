"""Math shared by the locate-then-edit editors (ROME, MEMIT, PMET), written once.

keys.py    k = input of down_proj at the edit token (the prompt's last token); the key distance
           (L2 or cosine) that GRACE's codebook and the runner's records share
values.py  the target value: a delta at the edit token optimised so the model says the target
stats.py   C = E[k k^T] over a code corpus, cached on disk (atomic writes, corrupt files recomputed)
solve.py   ROME's rank-one closed form, MEMIT's least squares and its spread over layers
params.py  the hparams these editors share, and the study's YAML keys translated
"""
