-- one row per run, sample, query, layer and head, with the derived head scores of
-- warehouse/sql/definitions.sql (concentration, concentration × sum)
-- (n_image is stored on every row and this view joins nothing: marts aggregate first, then join
-- the small runs and stg_layers views for model, benchmark, depth and stage)
select
    run_id,
    sample_idx,
    query,
    layer,
    head,
    n_image,
    image_sum,
    image_entropy,
    image_max,
    image_argmax,
    bos_sum,
    system_sum,
    prompt_sum,
    generated_sum,
    region_sum,
    region_entropy,
    region_hit,
    concentration(image_entropy, n_image) as concentration,
    head_score('concentration_x_sum', m) as concentration_x_sum
from head_metrics as m
