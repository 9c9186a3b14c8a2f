-- one row per run, oldest first: what `attnwh runs` lists; an extraction plans samples, a sweep conditions (its parts)
select
    run_id,
    kind,
    model,
    benchmark,
    case when part_unit = 'sample' then n_samples end as n_samples,
    case when part_unit = 'condition' then n_samples end as n_conditions,
    parts_committed,
    n_parts,
    complete,
    dtype,
    created
from stg_runs
order by created, run_id
