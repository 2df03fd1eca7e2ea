"""``edue predict``: prediction on image files — collecting the inputs, the
reading / predicting / writing pipeline, the writers of every output, and the referral
decision of each image when the run is calibrated."""
