-- one row per attribution run (attnwh attribute) and complete extraction run of the same model, revision and
-- benchmark (extraction columns null where there is none): the pairs in which attention-based and causal
-- rankings of the same heads are set side by side (report_attribution_heads takes each attribution run's newest
-- extraction, visual_heads each extraction run's newest attribution)
with attribution_runs as (
    select distinct
        a.run_id,
        a.model,
        a.benchmark,
        a.method,
        a.target,
        a.ablation,
        r.created,
        json_extract_string(r.spec, '$.model_revision') as revision
    from stg_head_attributions as a
    join stg_runs as r using (run_id)
),
extractions as (
    select run_id, model, benchmark, created, json_extract_string(spec, '$.model_revision') as revision
    from stg_runs
    where kind = 'extract' and complete
)
select
    a.run_id as attribution_run,
    a.model,
    a.benchmark,
    a.method,
    a.target,
    a.ablation,
    a.created as attribution_created,
    e.run_id as extraction_run,
    e.created as extraction_created
from attribution_runs as a
left join extractions as e on e.model = a.model and e.benchmark = a.benchmark and e.revision = a.revision
