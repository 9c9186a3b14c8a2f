-- one row per run, oldest first: what `attnwh runs` lists; an extraction plans samples, a sweep conditions (its parts)
select
    run_id,
    kind,
    model,
    benchmark,
    case when kind in ('extract', 'derived') then n_samples end as n_samples,
    case when kind in ('mask', 'prune', 'attribution') then n_samples end as n_conditions,
    parts_committed,
    n_parts,
    complete,
    dtype,
    created
from stg_runs
order by created, run_id
