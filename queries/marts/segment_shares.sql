-- one row per run, query and layer: where the attention goes, as mean shares of each token segment
select
    run_id,
    model,
    benchmark,
    query,
    layer,
    any_value(depth) as depth,
    count(*) as n,
    avg(image_sum) as image,
    avg(bos_sum) as bos,
    avg(system_sum) as system,
    avg(prompt_sum) as prompt,
    avg(generated_sum) as generated
from stg_head_metrics
group by run_id, model, benchmark, query, layer
