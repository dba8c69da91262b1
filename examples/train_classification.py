"""Distil an image classifier with DTO-KD (the shape of transformers' run_image_classification.py).

The code lives in ``hf_dtokd/cli/classify.py`` so that ``pip install hf-dtokd`` installs it as the
``hf-dtokd-classify`` command; this file runs the same thing from a clone::

    python examples/train_classification.py --model_name_or_path google/vit-base-patch16-224-in21k \\
        --teacher_model_name_or_path microsoft/resnet-50 --dataset_name beans \\
        --output_dir vit-beans-dtokd --method dto --do_train --do_eval --max_steps 2000 --push_to_hub
"""

from hf_dtokd.cli.classify import main

if __name__ == "__main__":
    main()
