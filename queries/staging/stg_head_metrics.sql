-- one row per run, sample, query, layer and head, with the derived head scores of
-- warehouse/sql/definitions.sql (concentration, concentration × sum)
-- (n_image is stored on every row and this view joins nothing: marts aggregate first, then join
-- the small runs and stg_layers views for model, benchmark, depth and stage). Where the image gets no
-- attention its entropy, most-attended token and region hit are null (parts written before stored 0s)
select
    run_id,
    sample_idx,
    query,
    layer,
    head,
    n_image,
    image_sum,
    case when image_sum > 0 then image_entropy end as image_entropy,
    image_max,
    case when image_sum > 0 then image_argmax end as image_argmax,
    bos_sum,
    system_sum,
    prompt_sum,
    generated_sum,
    region_sum,
    case when region_sum > 0 then region_entropy end as region_entropy,
    head_score('region_hit', m)::float as region_hit,
    concentration(image_entropy, n_image, image_sum) as concentration,
    head_score('concentration_x_sum', m) as concentration_x_sum
from head_metrics as m
