-- one row per extraction run and per sweep condition on a benchmark with object annotations (AMBER's generative
-- queries, toy-shapes-caption): AMBER's metrics from the answers' object words, summed as AMBER's scoring script
-- sums them. CHAIR = hallucinated object mentions / object mentions; Cover = annotated objects named / annotated
-- objects; Hal = share of answers naming at least one hallucinated object (with a 95% Wilson interval); Cog =
-- objects of the annotation's hallu list named / hallu-list objects. A sweep condition is compared with its run's
-- baseline (condition 0) on the samples both answered (n_paired; a sample that failed in one is left out of both
-- sides of the deltas, as sweep_accuracy pairs them): does masking these heads make the model hallucinate more?
with answers as (
    select run_id, 'extract' as kind, cast(null as integer) as condition_id, sample_idx,
        object_mentions, hallucinated, truth_objects, truth_mentioned, hallu_objects, hallu_mentioned
    from stg_samples
    where status = 'ok' and object_mentions is not null
    union all
    select run_id, kind, condition_id, sample_idx,
        object_mentions, hallucinated, truth_objects, truth_mentioned, hallu_objects, hallu_mentioned
    from stg_sweep_results
    where status = 'ok' and object_mentions is not null
),
per_condition as (
    select
        run_id,
        kind,
        condition_id,
        count(*) as n_answers,
        sum(object_mentions) as object_mentions,
        sum(hallucinated) as hallucinated,
        count(*) filter (where hallucinated > 0) as answers_hallucinating,
        sum(hallucinated) / nullif(sum(object_mentions), 0) as chair,
        sum(truth_mentioned) / nullif(sum(truth_objects), 0) as cover,
        count(*) filter (where hallucinated > 0) / count(*) as hal,
        sum(hallu_mentioned) / nullif(sum(hallu_objects), 0) as cog,
        avg(object_mentions) as mentions_per_answer
    from answers
    group by run_id, kind, condition_id
),
paired as (
    select
        c.run_id,
        c.kind,
        c.condition_id,
        count(*) as n_paired,
        sum(c.hallucinated) / nullif(sum(c.object_mentions), 0) - sum(b.hallucinated) / nullif(sum(b.object_mentions), 0) as chair_delta,
        sum(c.truth_mentioned) / nullif(sum(c.truth_objects), 0) - sum(b.truth_mentioned) / nullif(sum(b.truth_objects), 0) as cover_delta,
        (count(*) filter (where c.hallucinated > 0) - count(*) filter (where b.hallucinated > 0)) / count(*) as hal_delta
    from answers as c
    join answers as b on b.run_id = c.run_id and b.kind = c.kind and b.condition_id = 0 and b.sample_idx = c.sample_idx
    group by c.run_id, c.kind, c.condition_id
)
select
    p.run_id,
    r.model,
    r.benchmark,
    p.kind,
    p.condition_id,
    c.settings,
    p.n_answers,
    p.object_mentions,
    p.hallucinated,
    p.chair,
    p.cover,
    p.hal,
    wilson_low(p.answers_hallucinating, p.n_answers) as hal_ci_low,
    wilson_high(p.answers_hallucinating, p.n_answers) as hal_ci_high,
    p.cog,
    p.mentions_per_answer,
    b.n_paired,
    b.chair_delta,
    b.cover_delta,
    b.hal_delta
from per_condition as p
join stg_runs as r using (run_id)
left join stg_sweep_conditions as c on c.run_id = p.run_id and c.condition_id = p.condition_id
left join paired as b on b.run_id = p.run_id and b.kind = p.kind and b.condition_id = p.condition_id
order by r.model, r.benchmark, p.run_id, p.condition_id nulls first
