"""Distil a semantic-segmentation model with DTO-KD (the shape of transformers' run_semantic_segmentation.py).

The code lives in ``hf_dtokd/cli/segment.py`` so that ``pip install hf-dtokd`` installs it as the
``hf-dtokd-segment`` command; this file runs the same thing from a clone::

    python examples/train_segmentation.py --model_name_or_path nvidia/mit-b0 \\
        --teacher_model_name_or_path nvidia/segformer-b2-finetuned-ade-512-512 --dataset_name scene_parse_150 \\
        --do_reduce_labels --output_dir segformer-b0-ade-dtokd --method dto --do_train --do_eval \\
        --max_steps 160000 --remove_unused_columns false --push_to_hub
"""

from hf_dtokd.cli.segment import main

if __name__ == "__main__":
    main()
