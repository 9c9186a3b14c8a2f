-- one row per run (the sound ones: damaged runs are left out of every view, with a warning)
select
    run_id,
    kind,
    model,
    benchmark,
    split,
    created,
    fingerprint,
    n_samples,
    n_parts,
    parts_committed,
    complete,
    architecture,
    n_layers,
    n_heads,
    n_kv_heads,
    dtype,
    prompt_format,
    prompt_style,
    device,
    spec,
    path
from runs
