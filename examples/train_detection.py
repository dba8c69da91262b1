"""Distil an object detector with DTO-KD (the shape of transformers' run_object_detection.py).

The code lives in ``hf_dtokd/cli/detect.py`` so that ``pip install hf-dtokd`` installs it as the
``hf-dtokd-detect`` command; this file runs the same thing from a clone::

    python examples/train_detection.py --model_name_or_path PekingU/rtdetr_r18vd \\
        --teacher_model_name_or_path PekingU/rtdetr_r50vd --dataset_name cppe-5 \\
        --output_dir rtdetr-cppe5-dtokd --method dto --do_train --do_eval --max_steps 5000 \\
        --remove_unused_columns false --push_to_hub
"""

from hf_dtokd.cli.detect import main

if __name__ == "__main__":
    main()
