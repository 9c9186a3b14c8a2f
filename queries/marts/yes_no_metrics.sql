-- Yes / no metrics for every run and sweep condition with yes / no questions (a gold answer of yes or no: POPE, AMBER's
-- discriminative queries, the toy's yes / no questions), as each benchmark's own script counts them: accuracy,
-- precision, recall and F1 of its positive class (yes_no_positive: yes for POPE, its evaluate.py and LLaVA-1.5's
-- eval_pope.py; no for AMBER, its inference.py), and the share of answers that are yes. A prediction of a class is an
-- answer parsed as it. With POPE's own parser (`pope`, the llava-eval style) every answer is yes or no, and these are
-- POPE's numbers; with `yes_no` (the study style) an answer that is neither is counted in n_invalid and as wrong, and
-- predicts neither class. Extraction runs get a row for all their samples (category null) and one per category
-- (POPE's setting with --split all, AMBER's object or dimension).
with answers as (
    select run_id, 'extract' as kind, cast(null as integer) as condition_id, category, gold, parsed
    from stg_samples
    where status = 'ok' and gold in ('yes', 'no')
    union all
    select run_id, kind, condition_id, cast(null as varchar) as category, gold, parsed
    from stg_sweep_results
    where status = 'ok' and gold in ('yes', 'no')
),
classed as (
    select a.*, yes_no_positive(r.benchmark) as positive
    from answers as a
    join stg_runs as r using (run_id)
),
counted as (
    select
        run_id,
        kind,
        condition_id,
        positive,
        category,
        grouping(category) = 1 as every_category,
        count(*) as n,
        count(*) filter (where parsed not in ('yes', 'no')) as n_invalid,
        count(*) filter (where parsed = 'yes') as n_yes,
        count(*) filter (where parsed = positive and gold = positive) as tp,
        count(*) filter (where parsed = positive and gold <> positive) as fp,
        count(*) filter (where parsed in ('yes', 'no') and parsed <> positive and gold <> positive) as tn,
        count(*) filter (where parsed in ('yes', 'no') and parsed <> positive and gold = positive) as fn
    from classed
    group by grouping sets ((run_id, kind, condition_id, positive), (run_id, kind, condition_id, positive, category))
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
    c.positive,
    (c.tp + c.tn) / c.n as accuracy,
    c.tp / nullif(c.tp + c.fp, 0) as "precision",
    c.tp / nullif(c.tp + c.fn, 0) as recall,
    2 * c.tp / nullif(2 * c.tp + c.fp + c.fn, 0) as f1,
    c.n_yes / c.n as yes_ratio,
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
