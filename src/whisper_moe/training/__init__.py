"""Training machinery shared by the train and pretrain stages."""
