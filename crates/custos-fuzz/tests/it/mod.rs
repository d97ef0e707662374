mod corpus;
mod props;
