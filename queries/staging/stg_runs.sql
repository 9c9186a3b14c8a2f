-- one row per run (the sound ones: damaged runs are left out of every view, with a warning); shown_order ranks
-- the runs of one kind, model and benchmark for the report, whose per-model panels show one run each (the
-- first that has rows for the panel): complete before incomplete, then the newest (then the larger run id)
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
    n_decoder_layers,  -- the lens's layers: more than n_layers (attention layers) in a hybrid model
    dtype,
    prompt_format,
    prompt_style,
    device,
    spec,
    path,
    part_unit,
    row_number() over (partition by kind, model, benchmark order by complete desc, created desc, run_id desc) as shown_order
from runs
