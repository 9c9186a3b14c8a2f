-- POPE's metrics (its evaluate.py, LLaVA-1.5's eval_pope.py) for every run and sweep condition with yes / no
-- questions (a gold answer of yes or no: POPE, AMBER's discriminative queries, the toy's yes / no questions): yes is the
-- positive class, a prediction of yes is an answer parsed as yes. With POPE's own parser (`pope`, the llava-eval
-- style) every answer is yes or no, and these are POPE's numbers; with `yes_no` (the study style) an answer that is
-- neither is counted in n_invalid and as wrong, and predicts neither class. Extraction runs get a row for all their
-- samples (category null) and one per category (POPE's setting with --split all, AMBER's object or dimension).
with answers as (
    select run_id, 'extract' as kind, cast(null as integer) as condition_id, category, gold, parsed
    from stg_samples
    where status = 'ok' and gold in ('yes', 'no')
    union all
    select run_id, kind, condition_id, cast(null as varchar) as category, gold, parsed
    from stg_sweep_results
    where status = 'ok' and gold in ('yes', 'no')
),
counted as (
    select
        run_id,
        kind,
        condition_id,
        category,
        grouping(category) = 1 as every_category,
        count(*) as n,
        count(*) filter (where parsed not in ('yes', 'no')) as n_invalid,
        count(*) filter (where parsed = 'yes' and gold = 'yes') as tp,
        count(*) filter (where parsed = 'yes' and gold = 'no') as fp,
        count(*) filter (where parsed = 'no' and gold = 'no') as tn,
        count(*) filter (where parsed = 'no' and gold = 'yes') as fn
    from answers
    group by grouping sets ((run_id, kind, condition_id), (run_id, kind, condition_id, category))
)
select
    c.run_id,
    r.model,
    r.benchmark,
    c.kind,
    c.condition_id,
    c.category,
    c.n,
    c.n_invalid,
    (c.tp + c.tn) / c.n as accuracy,
    c.tp / nullif(c.tp + c.fp, 0) as "precision",
    c.tp / nullif(c.tp + c.fn, 0) as recall,
    2 * c.tp / nullif(2 * c.tp + c.fp + c.fn, 0) as f1,
    (c.tp + c.fp) / c.n as yes_ratio,
    c.tp,
    c.fp,
    c.tn,
    c.fn
from counted as c
join stg_runs as r using (run_id)
-- a sweep's per-category rows would repeat its condition rows (sweep results carry no category); samples without a
-- category are in their run's row only
where c.every_category or (c.kind = 'extract' and c.category is not null)
order by c.run_id, c.condition_id nulls first, c.category nulls first
