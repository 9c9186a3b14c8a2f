-- one row per head of every attribution run (attnwh attribute): its causal importance beside its attention score
-- (the mean of $score on $query) over the newest complete extraction run of the same model, revision and
-- benchmark (null where there is none), and the head's stage: the report's scatter of attention against attribution
with paired as (
    select attribution_run, model, benchmark, method, target, ablation, arg_max(extraction_run, (extraction_created, extraction_run)) as extraction_run
    from stg_attribution_pairs
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
