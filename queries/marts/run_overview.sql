-- one row per run: what it is, how far it got, and how well the model answered
with extract_samples as (
    select
        run_id,
        count(*) as n_rows,
        count(*) filter (where status = 'error') as n_errors,
        count(*) filter (where status = 'ok' and parsed = 'invalid') as n_invalid,
        avg(case when correct then 1.0 when correct = false then 0.0 end) as accuracy
    from stg_samples
    group by run_id
),
-- MMBench's circular evaluation: a question (group_key) counts as right only when every rotation is; only questions
-- with every rotation in the run count (one per option: a --limit or an unfinished run may hold some of them)
circular as (
    select run_id, avg(case when all_right then 1.0 else 0.0 end) as circular_accuracy, count(*) as n_groups
    from (
        select run_id, group_key, bool_and(coalesce(status = 'ok' and correct, false)) as all_right
        from stg_samples
        where group_key is not null
        group by run_id, group_key
        having count(*) = max(len(choices))
    )
    group by run_id
),
-- sweep runs (mask, prune): one row per condition and sample; accuracy is the baseline's (condition 0: unmasked / the full cache)
sweep_samples as (
    select
        run_id,
        count(*) as n_rows,
        count(*) filter (where status = 'error') as n_errors,
        count(*) filter (where status = 'ok' and parsed = 'invalid') as n_invalid,
        avg(case when correct then 1.0 when correct = false then 0.0 end) filter (where condition_id = 0) as accuracy
    from stg_sweep_results
    group by run_id
),
counted as (
    select * from extract_samples
    union all
    select * from sweep_samples
)
select
    r.run_id,
    r.kind,
    r.model,
    r.benchmark,
    r.architecture,
    r.n_layers,
    r.n_heads,
    r.n_kv_heads,
    r.dtype,
    r.n_samples as n_planned,
    r.parts_committed,
    r.n_parts,
    r.complete,
    coalesce(c.n_rows, 0) as n_rows,
    coalesce(c.n_errors, 0) as n_errors,
    coalesce(c.n_invalid, 0) as n_invalid,
    c.accuracy,
    g.n_groups,
    g.circular_accuracy,
    r.created
from stg_runs as r
left join counted as c using (run_id)
left join circular as g using (run_id)
order by r.created, r.run_id
