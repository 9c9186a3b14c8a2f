-- one row per run, query and layer: where the attention goes, as mean shares of each token segment
with per_layer as (
    select
        run_id,
        query,
        layer,
        count(*) as n,
        avg(image_sum) as image,
        avg(bos_sum) as bos,
        avg(system_sum) as system,
        avg(prompt_sum) as prompt,
        avg(generated_sum) as generated
    from stg_head_metrics
    group by run_id, query, layer
)
select
    p.run_id,
    r.model,
    r.benchmark,
    p.query,
    p.layer,
    l.depth,
    p.n,
    p.image,
    p.bos,
    p.system,
    p.prompt,
    p.generated
from per_layer as p
join runs as r using (run_id)
join stg_layers as l using (run_id, layer)
