-- one row per head of every attribution run (attnwh attribute): its causal importance beside its attention score
-- (the mean of $score on $query) over the newest complete extraction run of the same model, revision and
-- benchmark (null where there is none), and the head's stage: the report's scatter of attention against attribution
with attribution_runs as (
    select distinct a.run_id, a.model, a.benchmark, a.method, a.target, a.ablation, json_extract_string(r.spec, '$.model_revision') as revision
    from stg_head_attributions as a
    join stg_runs as r using (run_id)
),
extractions as (
    select run_id, model, benchmark, json_extract_string(spec, '$.model_revision') as revision, created
    from stg_runs
    where kind = 'extract' and complete
),
paired as (
    select a.run_id as attribution_run, a.model, a.benchmark, a.method, a.target, a.ablation, arg_max(e.run_id, (e.created, e.run_id)) as extraction_run
    from attribution_runs as a
    left join extractions as e on e.model = a.model and e.benchmark = a.benchmark and e.revision = a.revision
    group by all
)
select
    p.model,
    p.benchmark,
    p.attribution_run,
    p.method,
    p.target,
    p.ablation,
    p.extraction_run,
    h.layer,
    h.head,
    h.stage,
    h.score as attribution,
    h.std_error,
    h.ci_low,
    h.ci_high,
    case when s.n > 0 then s.total / s.n end as attention
from paired as p
join stg_head_attributions as h on h.run_id = p.attribution_run
left join stg_head_scores as s
    on s.run_id = p.extraction_run and s.query = $query and s.score = $score and s.layer = h.layer and s.head = h.head
order by p.model, p.benchmark, p.attribution_run, h.layer, h.head
