-- Number of posts per trait x level x split. Rows with a NULL level (and split) count the
-- middle third dropped for that trait, so n_posts summed over a trait equals the number of
-- posts. Order by trait_ordinal (O, C, E, A, N), then level and split.
{{ config(materialized='table') }}

select
    trait_ordinal,
    trait,
    level,
    split,
    count(*) as n_posts
from {{ ref('stg_psychgenerator_posts') }}
group by trait_ordinal, trait, level, split
order by trait_ordinal, level nulls last, split nulls last
