//! The tool families `synth` draws from: each function with its parameters, how their values are
//! drawn, and the query templates that state those values.
//!
//! Template syntax: `{p}` is parameter `p`'s value as the query states it; `{p:yes|no}` is a
//! boolean parameter, stated by the first text when true and the second when false; `[...]` is an
//! optional segment, kept only when every parameter inside it was drawn. A required parameter
//! appears outside segments, an optional one only inside them. A template starting with a
//! lowercase letter is an imperative clause (it can be joined with others into one request); one
//! starting with an uppercase letter is a whole request and is used alone.
//!
//! No name here may equal a BFCL function name (a test checks it against BFCL's data), so that
//! training on synth rows never teaches an eval answer by heart.

use serde_json::{Value, json};

use super::rng::Rng;

pub struct Family {
    pub name: &'static str,
    /// Families of one group may overlap in meaning: an irrelevance row never offers a tool of
    /// the group its query came from.
    pub group: &'static str,
    pub funcs: &'static [Func],
}

pub struct Func {
    pub name: &'static str,
    pub description: &'static str,
    pub params: &'static [Param],
    pub templates: &'static [&'static str],
    pub rules: &'static [Rule],
}

pub struct Param {
    pub name: &'static str,
    pub description: &'static str,
    pub source: Gen,
    pub need: Need,
}

#[derive(Clone, Copy)]
pub enum Need {
    Required,
    Optional,
    Default(Lit),
}

#[derive(Clone, Copy)]
pub enum Lit {
    Str(&'static str),
    Int(i64),
    Float(f64),
    Bool(bool),
}

/// How a parameter's value is drawn, and so its declared type.
#[derive(Clone, Copy)]
pub enum Gen {
    /// A string from the pool, stated as is.
    Words(&'static [&'static str]),
    /// A string from the pool, stated in quotes.
    Quoted(&'static [&'static str]),
    /// One of the allowed values (listed in the description).
    Choice(&'static [&'static str]),
    Int(i64, i64),
    /// `lo..=hi` in steps of 10^-decimals.
    Float(f64, f64, u32),
    Bool,
    /// A date, `YYYY-MM-DD` in the arguments.
    Date,
    /// A time of day, `HH:MM` (24-hour) in the arguments.
    Time,
    /// Distinct strings from the pool, `min..=max` of them.
    WordList(&'static [&'static str], usize, usize),
    /// Distinct allowed values (listed in the description), `min..=max` of them.
    ChoiceList(&'static [&'static str], usize, usize),
    IntList(i64, i64, usize, usize),
    FloatList(f64, f64, u32, usize, usize),
    /// Anything else: the declared type, and a generator of (value, how the query states it).
    Custom(Ty, fn(&mut Rng) -> (Value, String)),
}

/// A parameter's declared type, before the optional/default modifiers.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Ty {
    Str,
    Int,
    Float,
    Bool,
    ListStr,
    ListInt,
    ListFloat,
    Dict,
    /// `Tuple[float, float]`.
    FloatPair,
}

impl Gen {
    pub fn ty(&self) -> Ty {
        match self {
            Gen::Words(_) | Gen::Quoted(_) | Gen::Choice(_) | Gen::Date | Gen::Time => Ty::Str,
            Gen::Int(..) => Ty::Int,
            Gen::Float(..) => Ty::Float,
            Gen::Bool => Ty::Bool,
            Gen::WordList(..) | Gen::ChoiceList(..) => Ty::ListStr,
            Gen::IntList(..) => Ty::ListInt,
            Gen::FloatList(..) => Ty::ListFloat,
            Gen::Custom(ty, _) => *ty,
        }
    }

    /// The allowed values, for enum-like parameters.
    pub fn allowed(&self) -> Option<&'static [&'static str]> {
        match self {
            Gen::Choice(values) | Gen::ChoiceList(values, ..) => Some(values),
            _ => None,
        }
    }
}

/// A constraint between two parameters of one call (checked only when both were drawn).
pub enum Rule {
    /// The two values differ (`from_currency` vs `to_currency`).
    Differ(&'static str, &'static str),
    /// The first value sorts strictly before the second (dates, numbers).
    Before(&'static str, &'static str),
    /// Two lists of the same length (the second is redrawn to the first's length).
    SameLength(&'static str, &'static str),
}

/// Groups whose tools could answer almost any question (a web search): irrelevance rows never
/// offer them, since "no tool fits" would not be true.
pub const CATCH_ALL_GROUPS: &[&str] = &["search"];

const fn req(name: &'static str, description: &'static str, source: Gen) -> Param {
    Param {
        name,
        description,
        source,
        need: Need::Required,
    }
}

const fn opt(name: &'static str, description: &'static str, source: Gen) -> Param {
    Param {
        name,
        description,
        source,
        need: Need::Optional,
    }
}

const fn def(name: &'static str, description: &'static str, source: Gen, default: Lit) -> Param {
    Param {
        name,
        description,
        source,
        need: Need::Default(default),
    }
}

// ---- value pools -------------------------------------------------------------------------------

const CITIES: &[&str] = &[
    "Zürich",
    "São Paulo",
    "Kraków",
    "Reykjavík",
    "Tokyo",
    "Nairobi",
    "Montréal",
    "Buenos Aires",
    "Düsseldorf",
    "Málaga",
    "Oslo",
    "Cape Town",
    "Mumbai",
    "Chicago",
    "Seattle",
    "Lisbon",
    "Istanbul",
    "Marrakech",
    "Vancouver",
    "Auckland",
    "Lima",
    "Bogotá",
    "Genève",
    "Seoul",
    "Athens",
    "Dublin",
    "Helsinki",
    "Toronto",
    "Denver",
    "Ho Chi Minh City",
    "Córdoba",
    "Tromsø",
    "Québec City",
    "Wrocław",
    "Île-de-Bréhat",
];
const AIRPORTS: &[&str] = &[
    "ZRH", "GRU", "KRK", "KEF", "HND", "NBO", "YUL", "EZE", "DUS", "AGP", "OSL", "CPT", "BOM",
    "ORD", "SEA", "LIS", "IST", "RAK", "YVR", "AKL", "LIM", "BOG", "GVA", "ICN",
];
const PEOPLE: &[&str] = &[
    "Zoë Martín",
    "José Álvarez",
    "Aoife O'Brien",
    "Björn Lindqvist",
    "Priya Raman",
    "Chen Wei",
    "Fatima Haddad",
    "Łukasz Nowak",
    "Amara Okafor",
    "Mateo Rossi",
    "Hannah Schäfer",
    "Kenji Watanabe",
    "Noor Al-Sayed",
    "Siobhán Kelly",
    "Rafael Peña",
    "Ingrid Sørensen",
];
const EMAILS: &[&str] = &[
    "zoe.martin@example.com",
    "jose.alvarez@example.org",
    "aoife@example.net",
    "bjorn.l@example.com",
    "priya.raman@example.io",
    "chen.wei@example.com",
    "f.haddad@example.org",
    "lukasz.nowak@example.com",
    "amara+invoices@example.net",
    "team-leads@example.org",
];
const PHONES: &[&str] = &[
    "+41 79 555 01 23",
    "+55 11 5550 1234",
    "+1 312 555 0147",
    "+44 20 7946 0958",
    "+81 3 5550 4321",
    "+49 211 5550 987",
    "+48 12 555 20 40",
    "+254 20 555 0199",
];
const TICKERS: &[&str] = &[
    "AAPL", "MSFT", "NVDA", "ASML", "NESN", "SAP", "TSLA", "AMZN", "SHOP", "TM", "PETR4", "CDR",
];
const EXCHANGES: &[&str] = &["NASDAQ", "NYSE", "SIX", "XETRA", "B3", "TSE", "GPW"];
const CURRENCIES: &[&str] = &[
    "USD", "EUR", "CHF", "GBP", "JPY", "BRL", "PLN", "CAD", "INR", "ZAR", "NOK", "SEK",
];
const CRYPTO: &[&str] = &["BTC", "ETH", "SOL", "ADA", "DOT", "XMR"];
const FIAT: &[&str] = &["USD", "EUR", "CHF", "GBP", "JPY"];
const LANGUAGES: &[&str] = &[
    "English",
    "German",
    "French",
    "Spanish",
    "Portuguese",
    "Italian",
    "Japanese",
    "Polish",
    "Swedish",
    "Icelandic",
];
const LENGTH_UNITS: &[&str] = &[
    "millimeter",
    "centimeter",
    "meter",
    "kilometer",
    "inch",
    "foot",
    "yard",
    "mile",
];
const TEMP_SCALES: &[&str] = &["celsius", "fahrenheit", "kelvin"];
const NEWS_TOPICS: &[&str] = &[
    "technology",
    "science",
    "business",
    "sports",
    "health",
    "culture",
    "climate",
];
const COUNTRIES: &[&str] = &[
    "Switzerland",
    "Brazil",
    "Poland",
    "Iceland",
    "Japan",
    "Kenya",
    "Canada",
    "Argentina",
    "Germany",
    "Spain",
    "Norway",
    "South Africa",
    "India",
    "Türkiye",
    "Perú",
    "Colombia",
];
const CUISINES: &[&str] = &[
    "italian",
    "japanese",
    "mexican",
    "indian",
    "thai",
    "french",
    "ethiopian",
    "peruvian",
];
const INGREDIENTS: &[&str] = &[
    "chickpeas",
    "spinach",
    "feta",
    "tofu",
    "basmati rice",
    "coconut milk",
    "lemongrass",
    "sweet potato",
    "crème fraîche",
    "miso",
    "jalapeño",
    "quinoa",
    "mushrooms",
    "leeks",
];
const RECIPES: &[&str] = &[
    "Grandma's lasagna",
    "Pad Thai",
    "Shakshuka",
    "Crème brûlée",
    "Käsespätzle",
    "Pão de queijo",
    "Chana masala",
    "Bircher muesli",
    "Pierogi ruskie",
];
const KITCHEN_MEASURES: &[&str] = &[
    "cup",
    "tablespoon",
    "teaspoon",
    "gram",
    "ounce",
    "milliliter",
];
const BAKING_ITEMS: &[&str] = &[
    "flour",
    "sugar",
    "butter",
    "rolled oats",
    "honey",
    "cocoa powder",
    "milk",
    "rice",
];
const FOODS: &[&str] = &[
    "oats",
    "salmon",
    "avocado",
    "brown rice",
    "Greek yogurt",
    "almonds",
    "lentils",
    "banana",
    "tempeh",
    "broccoli",
    "açaí",
];
const NUTRIENTS: &[&str] = &[
    "calories",
    "protein",
    "fat",
    "carbohydrates",
    "fiber",
    "sugar",
    "sodium",
];
const ACTIVITIES: &[&str] = &[
    "running",
    "cycling",
    "swimming",
    "rowing",
    "hiking",
    "yoga",
    "jump_rope",
];
const MEDICATIONS: &[&str] = &[
    "ibuprofen",
    "paracetamol",
    "amoxicillin",
    "loratadine",
    "omeprazole",
    "metformin",
    "sertraline",
    "atorvastatin",
];
const LEAGUES: &[&str] = &[
    "premier_league",
    "la_liga",
    "bundesliga",
    "serie_a",
    "ligue_1",
    "eredivisie",
    "super_league",
    "brasileirao",
];
const TEAMS: &[&str] = &[
    "FC Zürich",
    "Grêmio",
    "Wisła Kraków",
    "Borussia Dortmund",
    "Club América",
    "Celtic",
    "Ajax",
    "Olympiacos",
    "Flamengo",
    "Young Boys",
    "Atlético Nacional",
];
const ARTISTS: &[&str] = &[
    "Björk",
    "Sigur Rós",
    "Caetano Veloso",
    "Rosalía",
    "Ólafur Arnalds",
    "Stromae",
    "Fela Kuti",
    "Hikaru Utada",
    "Mitski",
    "Khruangbin",
    "Mercedes Sosa",
];
const SONGS: &[&str] = &[
    "Hoppípolla",
    "Malamente",
    "Papaoutai",
    "Alors on danse",
    "Water No Get Enemy",
    "First Love",
    "Nobody",
    "Jóga",
    "Gracias a la vida",
    "Maria, Maria",
];
const PLAYLISTS: &[&str] = &[
    "Sunday Morning",
    "Deep Focus",
    "Road Trip '25",
    "Workout Mix",
    "Late-Night Jazz",
    "Für die Küche",
    "Rainy Days",
];
const MOVIES: &[&str] = &[
    "The Quiet Harbor",
    "Neon Orchard",
    "Midnight in Lisbon",
    "A Map of Small Things",
    "Paper Comets",
    "Les Étoiles Filantes",
    "The \"Last\" Lighthouse",
];
const BOOKS: &[&str] = &[
    "The Glass Archive",
    "Winter Light",
    "Cartography of Salt",
    "Der Schattenfluss",
    "Cien Puertas",
    "Harbor of Echoes",
    "Notes from a Small Kitchen",
];
const BOOK_FORMATS: &[&str] = &["hardcover", "paperback", "ebook", "audiobook"];
const RESTAURANTS: &[&str] = &[
    "Zum Goldenen Hirschen",
    "La Pepita",
    "Café Ñandú",
    "Sakura Tei",
    "The Copper Pot",
    "Chez Léonie",
    "Trattoria Da Gino",
    "Bar do Zé",
];
const PLACE_KINDS: &[&str] = &[
    "pharmacy",
    "cafe",
    "atm",
    "supermarket",
    "hospital",
    "park",
    "gas_station",
    "library",
];
const TRAVEL_MODES: &[&str] = &["driving", "walking", "cycling", "transit"];
const ADDRESSES: &[&str] = &[
    "Bahnhofstrasse 21, Zürich",
    "Avenida Paulista 1578, São Paulo",
    "Rynek Główny 1, Kraków",
    "221B Baker Street, London",
    "Laugavegur 28, Reykjavík",
    "Rua Augusta 100, Lisboa",
    "Karl Johans gate 22, Oslo",
];
const ROOMS: &[&str] = &[
    "living room",
    "bedroom",
    "kitchen",
    "office",
    "nursery",
    "hallway",
];
const HVAC_MODES: &[&str] = &["heat", "cool", "auto", "eco"];
const LIGHT_COLORS: &[&str] = &[
    "warm white",
    "cool white",
    "amber",
    "soft blue",
    "green",
    "magenta",
];
const FOLDERS: &[&str] = &[
    "/home/ana/reports",
    "/srv/projects/forge",
    "~/Documents/taxes 2024",
    "/data/exports",
    "C:\\Users\\jose\\Desktop",
    "/mnt/backup/fotos/2023",
];
const FILES: &[&str] = &[
    "/home/ana/reports/q3_summary.pdf",
    "/data/exports/budget-2025.xlsx",
    "~/notes.txt",
    "/srv/share/Präsentation_final.pptx",
    "/mnt/backup/fotos/photo_001.jpg",
    "C:\\Users\\jose\\contract (signed).pdf",
];
const NEW_NAMES: &[&str] = &[
    "q3_summary_final.pdf",
    "budget-2025-v2.xlsx",
    "old_notes.txt",
    "Präsentation_v3.pptx",
    "holiday_001.jpg",
    "contract_2025.pdf",
];
const EXTENSIONS: &[&str] = &["pdf", "csv", "txt", "jpg", "md", "xlsx"];
const ARCHIVE_FORMATS: &[&str] = &["zip", "tar.gz", "7z"];
const ARCHIVE_NAMES: &[&str] = &["backup_march", "q3-reports", "fotos_sommer", "handover"];
const CHANNELS: &[&str] = &[
    "#general",
    "#release-planning",
    "#random",
    "#ops-alerts",
    "#équipe-paris",
    "#design",
];
const HANDLES: &[&str] = &[
    "@zoe",
    "@jalvarez",
    "@aoife",
    "@bjorn",
    "@priya",
    "@chenwei",
    "@noor",
];
const CHAT_TEXTS: &[&str] = &[
    "Deploy is done, please verify",
    "Lunch at 12:30?",
    "The \"blue\" build is green again",
    "Meeting moved to room 4B",
    "Can someone review PR 1182?",
    "Grüße aus Zürich!",
    "Don't forget: retro at 16:00",
];
const SMS_TEXTS: &[&str] = &[
    "Running 10 minutes late, sorry!",
    "Your table is ready",
    "Call me when you land",
    "Happy birthday, Zoë! 🎉",
    "Pick up milk on the way home",
    "Bin heute Abend zurück",
];
const SUBJECTS: &[&str] = &[
    "Q3 numbers",
    "Trip to São Paulo",
    "Invoice #4471",
    "Re: onboarding plan",
    "Quick question about the \"beta\" flag",
    "Dinner on Friday?",
];
const BODIES: &[&str] = &[
    "Hi all, the report is attached. Cheers",
    "Can we move our call to Thursday?",
    "Please find the signed contract attached.",
    "Thanks for yesterday, it was great!",
    "The server will be down from 22:00 to 23:00 tonight.",
];
const PRIORITIES: &[&str] = &["low", "normal", "high"];
const CONTACT_FIELDS: &[&str] = &["email", "phone", "address", "birthday"];
const SEARCH_QUERIES: &[&str] = &[
    "best hiking trails near Zürich",
    "how to repot a fiddle leaf fig",
    "history of the São Paulo metro",
    "cheap flights to Reykjavík in March",
    "rust borrow checker explained",
    "visitor reviews of the \"Kunsthaus\" museum",
    "Łódź street art tour",
];
const SEARCH_LANGS: &[&str] = &["en", "de", "fr", "es", "pt", "pl"];
const WORDS: &[&str] = &[
    "serendipity",
    "ephemeral",
    "Weltschmerz",
    "saudade",
    "hygge",
    "ubiquitous",
    "petrichor",
    "sobremesa",
];
const TEXTS: &[&str] = &[
    "Where is the nearest train station?",
    "The meeting starts at nine o'clock.",
    "I'd like a table for two, please.",
    "Thank you for your help!",
    "Is breakfast included?",
    "My luggage didn't arrive.",
];
const CABINS: &[&str] = &["economy", "premium_economy", "business", "first"];
const AMENITIES: &[&str] = &[
    "wifi",
    "breakfast",
    "parking",
    "pool",
    "gym",
    "pet_friendly",
];
const CAR_CLASSES: &[&str] = &["compact", "midsize", "suv", "van", "electric"];
const STATIONS: &[&str] = &[
    "Zürich HB",
    "Bern",
    "Basel SBB",
    "München Hbf",
    "Milano Centrale",
    "Paris Gare de Lyon",
    "Wien Hbf",
    "Köln Hbf",
    "Amsterdam Centraal",
    "Kraków Główny",
];
const REGIONS: &[&str] = &[
    "California",
    "Ontario",
    "Bavaria",
    "Texas",
    "Québec",
    "New South Wales",
    "São Paulo state",
];
const TIMEZONES: &[&str] = &[
    "Europe/Zurich",
    "America/Sao_Paulo",
    "Asia/Tokyo",
    "America/New_York",
    "Africa/Nairobi",
    "Australia/Sydney",
    "Asia/Kolkata",
    "UTC",
    "Atlantic/Reykjavik",
];
const STAT_MEASURES: &[&str] = &["mean", "median", "mode", "stdev", "variance", "range"];
const SHIP_SERVICES: &[&str] = &["economy", "standard", "express", "overnight"];
const POSTCODES: &[&str] = &[
    "8001",
    "01310-100",
    "31-042",
    "10115",
    "SW1A 1AA",
    "60601",
    "V6B 1A1",
    "0150",
];
const CARRIERS: &[&str] = &["swiss_post", "dhl", "ups", "fedex", "correios", "inpost"];
const PRODUCT_QUERIES: &[&str] = &[
    "noise-cancelling headphones",
    "cast iron skillet",
    "trail running shoes size 42",
    "USB-C charger 65W",
    "children's raincoat",
    "espresso grinder",
];
const SORT_ORDERS: &[&str] = &["relevance", "price_asc", "price_desc", "rating", "newest"];
const TASKS: &[&str] = &[
    "Renew passport",
    "Call the plumber",
    "Submit expense report",
    "Buy birthday gift for Zoë",
    "Book dentist appointment",
    "Water the plants",
];
const TAGS: &[&str] = &["home", "work", "urgent", "errands", "finance", "health"];
const NOTE_TITLES: &[&str] = &[
    "Packing list",
    "Ideas for the offsite",
    "Wi-Fi passwords",
    "Recipe tweaks",
    "Book quotes",
];
const NOTE_BODIES: &[&str] = &[
    "passport, charger, adapter, sunscreen",
    "more \"quiet time\" between sessions",
    "guest network is on the fridge",
    "less sugar, more lemon zest",
    "«Not all those who wander are lost»",
];
const PLATFORMS: &[&str] = &["mastodon", "linkedin", "bluesky", "instagram"];
const POSTS: &[&str] = &[
    "We're hiring in Kraków and Zürich!",
    "New blog post: caching builds the boring way",
    "Thanks to everyone who came to the meetup 🙌",
    "Our office is closed on Friday.",
];
const ROLES: &[&str] = &[
    "data engineer",
    "pastry chef",
    "UX researcher",
    "backend developer",
    "physiotherapist",
    "logistics coordinator",
];
const SPECIES: &[&str] = &["dog", "cat", "rabbit", "guinea_pig", "parrot"];
const PLANTS: &[&str] = &[
    "fiddle leaf fig",
    "basil",
    "monstera",
    "lavender",
    "tomato",
    "orchid",
    "snake plant",
];
const CLIMATES: &[&str] = &[
    "arid",
    "temperate",
    "tropical",
    "continental",
    "mediterranean",
];
const ACCOUNTS: &[&str] = &["checking-001", "savings-204", "joint-557", "business-910"];
const IBANS: &[&str] = &[
    "CH93 0076 2011 6238 5295 7",
    "DE89 3704 0044 0532 0130 00",
    "GB29 NWBK 6016 1331 9268 19",
    "PL61 1090 1014 0000 0712 1981 2874",
    "NO93 8601 1117 947",
];
const POLLUTANTS: &[&str] = &["pm25", "pm10", "o3", "no2", "so2"];
const COMPOUNDING: &[&str] = &["annually", "quarterly", "monthly", "daily"];
const INTERVALS: &[&str] = &["1d", "1wk", "1mo"];
const FUEL_TYPES: &[&str] = &["petrol", "diesel", "electric", "hybrid"];

// ---- values that need more than a pool ---------------------------------------------------------

fn package_dimensions(r: &mut Rng) -> (Value, String) {
    let (l, w, h) = (r.range(10, 120), r.range(5, 80), r.range(2, 60));
    let text = if r.chance(0.5) {
        format!("{l} x {w} x {h} cm")
    } else {
        format!("{l} cm long, {w} cm wide and {h} cm high")
    };
    (json!({"length_cm": l, "width_cm": w, "height_cm": h}), text)
}

fn recurrence(r: &mut Rng) -> (Value, String) {
    let frequency = *r.pick(&["daily", "weekly", "monthly"]);
    let count = r.range(2, 12);
    (
        json!({"frequency": frequency, "count": count}),
        format!("repeating {frequency} for {count} occurrences"),
    )
}

fn delivery_address(r: &mut Rng) -> (Value, String) {
    let (street, postal, city) = *r.pick(&[
        ("Bahnhofstrasse 21", "8001", "Zürich"),
        ("Avenida Paulista 1578", "01310-200", "São Paulo"),
        ("ul. Floriańska 15", "31-019", "Kraków"),
        ("Laugavegur 28", "101", "Reykjavík"),
        ("Rue de Rivoli 99", "75001", "Paris"),
    ]);
    (
        json!({"street": street, "postal_code": postal, "city": city}),
        format!("{street}, {postal} {city}"),
    )
}

fn price_band(r: &mut Rng) -> (Value, String) {
    let min = r.range(1, 40) * 5;
    let max = min + r.range(2, 40) * 5;
    (
        json!({"min": min, "max": max}),
        format!("priced between {min} and {max}"),
    )
}

fn coordinates(r: &mut Rng) -> (Value, String) {
    let (name, lat, lon) = *r.pick(&[
        ("Zürich", 47.3769, 8.5417),
        ("São Paulo", -23.5505, -46.6333),
        ("Kraków", 50.0647, 19.945),
        ("Reykjavík", 64.1466, -21.9426),
        ("Nairobi", -1.2921, 36.8219),
        ("Tokyo", 35.6762, 139.6503),
        ("Lima", -12.0464, -77.0428),
    ]);
    let text = if r.chance(0.5) {
        format!("({lat}, {lon})")
    } else {
        format!("latitude {lat}, longitude {lon} ({name})")
    };
    (json!([lat, lon]), text)
}

fn tracking_number(r: &mut Rng) -> (Value, String) {
    let n = format!("1Z{:06}{:08}", r.range(0, 999_999), r.range(0, 99_999_999));
    (json!(n), n)
}

fn order_id(r: &mut Rng) -> (Value, String) {
    let n = format!("ORD-{}", r.range(10_000, 99_999));
    (json!(n), n)
}

// ---- the catalogue -----------------------------------------------------------------------------

pub static FAMILIES: &[Family] = &[
    Family {
        name: "weather",
        group: "weather",
        funcs: &[
            Func {
                name: "weather_now_for_city",
                description: "Report the current weather conditions for a city.",
                params: &[
                    req("city", "Name of the city, e.g. Zürich.", Gen::Words(CITIES)),
                    def(
                        "units",
                        "Temperature units.",
                        Gen::Choice(&["celsius", "fahrenheit"]),
                        Lit::Str("celsius"),
                    ),
                ],
                templates: &[
                    "get the current weather in {city}[ in {units}]",
                    "check what the weather is like in {city} right now[, with temperatures in {units}]",
                    "What's the weather in {city} at the moment?[ Please give temperatures in {units}.]",
                    "Is it raining in {city} right now?[ Use {units}.]",
                ],
                rules: &[],
            },
            Func {
                name: "weather_outlook_days",
                description: "Forecast the weather for a city over the coming days.",
                params: &[
                    req("city", "Name of the city.", Gen::Words(CITIES)),
                    req(
                        "days",
                        "Number of days to forecast, 2 to 14.",
                        Gen::Int(2, 14),
                    ),
                    def(
                        "include_hourly",
                        "Whether to include an hourly breakdown.",
                        Gen::Bool,
                        Lit::Bool(false),
                    ),
                ],
                templates: &[
                    "get a {days}-day forecast for {city}[{include_hourly: with hourly detail| without hourly detail}]",
                    "fetch the weather forecast for {city} for the next {days} days[{include_hourly:, including hourly breakdowns|, daily summaries only}]",
                    "What will the weather be like in {city} over the next {days} days?[{include_hourly: I'd like it hour by hour.| Daily summaries are enough.}]",
                ],
                rules: &[],
            },
        ],
    },
    Family {
        name: "air_quality",
        group: "weather",
        funcs: &[Func {
            name: "air_quality_index_lookup",
            description: "Look up the current air quality index of a city.",
            params: &[
                req("city", "Name of the city.", Gen::Words(CITIES)),
                opt(
                    "pollutant",
                    "Report a single pollutant instead of the overall index.",
                    Gen::Choice(POLLUTANTS),
                ),
            ],
            templates: &[
                "look up the air quality index in {city}[ for {pollutant}]",
                "check how clean the air is in {city} today[, focusing on {pollutant}]",
                "How bad is the air pollution in {city} right now?[ I only care about {pollutant}.]",
            ],
            rules: &[],
        }],
    },
    Family {
        name: "astronomy",
        group: "weather",
        funcs: &[
            Func {
                name: "sun_times_for_city",
                description: "Give sunrise and sunset times for a city on a date.",
                params: &[
                    req("city", "Name of the city.", Gen::Words(CITIES)),
                    req("date", "The date, YYYY-MM-DD.", Gen::Date),
                    def(
                        "twilight",
                        "Also give civil twilight times.",
                        Gen::Bool,
                        Lit::Bool(false),
                    ),
                ],
                templates: &[
                    "tell me when the sun rises and sets in {city} on {date}[{twilight:, including civil twilight|, without twilight times}]",
                    "get sunrise and sunset times for {city} on {date}[{twilight: with twilight| but skip twilight}]",
                    "When is sunset in {city} on {date}?[{twilight: Include civil twilight too.| No twilight times needed.}]",
                ],
                rules: &[],
            },
            Func {
                name: "lunar_phase_on",
                description: "Give the phase of the moon on a date.",
                params: &[
                    req("date", "The date, YYYY-MM-DD.", Gen::Date),
                    opt(
                        "hemisphere",
                        "Hemisphere the moon is seen from.",
                        Gen::Choice(&["north", "south"]),
                    ),
                ],
                templates: &[
                    "find out the moon phase on {date}[ as seen from the {hemisphere} hemisphere]",
                    "tell me what the moon looks like on {date}[ from the {hemisphere}ern hemisphere]",
                    "Will there be a full moon on {date}?[ I'm in the {hemisphere}ern hemisphere.]",
                ],
                rules: &[],
            },
        ],
    },
    Family {
        name: "currency",
        group: "finance",
        funcs: &[
            Func {
                name: "fx_convert_amount",
                description: "Convert an amount of money from one currency to another at today's rate.",
                params: &[
                    req(
                        "amount",
                        "The amount to convert.",
                        Gen::Float(1.0, 25000.0, 2),
                    ),
                    req(
                        "from_currency",
                        "ISO code of the source currency.",
                        Gen::Choice(CURRENCIES),
                    ),
                    req(
                        "to_currency",
                        "ISO code of the target currency.",
                        Gen::Choice(CURRENCIES),
                    ),
                ],
                templates: &[
                    "convert {amount} {from_currency} to {to_currency}",
                    "work out how much {amount} {from_currency} is in {to_currency}",
                    "How many {to_currency} do I get for {amount} {from_currency}?",
                    "I have {amount} {from_currency}. What is that in {to_currency}?",
                ],
                rules: &[Rule::Differ("from_currency", "to_currency")],
            },
            Func {
                name: "fx_rate_history",
                description: "Daily exchange rates between two currencies over a date range.",
                params: &[
                    req(
                        "base",
                        "ISO code of the base currency.",
                        Gen::Choice(CURRENCIES),
                    ),
                    req(
                        "quote",
                        "ISO code of the quote currency.",
                        Gen::Choice(CURRENCIES),
                    ),
                    req("start_date", "First day, YYYY-MM-DD.", Gen::Date),
                    req("end_date", "Last day, YYYY-MM-DD.", Gen::Date),
                ],
                templates: &[
                    "pull the {base}/{quote} exchange rate history from {start_date} to {end_date}",
                    "show me how the {base} to {quote} rate moved between {start_date} and {end_date}",
                    "What were the daily {base}-{quote} rates from {start_date} through {end_date}?",
                ],
                rules: &[
                    Rule::Differ("base", "quote"),
                    Rule::Before("start_date", "end_date"),
                ],
            },
        ],
    },
    Family {
        name: "stocks",
        group: "finance",
        funcs: &[
            Func {
                name: "equity_quote_snapshot",
                description: "Latest trading price and daily change of a stock.",
                params: &[
                    req("ticker", "The stock's ticker symbol.", Gen::Words(TICKERS)),
                    opt(
                        "exchange",
                        "Exchange to quote from.",
                        Gen::Choice(EXCHANGES),
                    ),
                ],
                templates: &[
                    "get the latest share price of {ticker}[ on {exchange}]",
                    "check how {ticker} is trading today[ on the {exchange}]",
                    "What's {ticker} trading at right now?[ Use the {exchange} listing.]",
                ],
                rules: &[],
            },
            Func {
                name: "equity_price_series",
                description: "Historical closing prices of a stock.",
                params: &[
                    req("ticker", "The stock's ticker symbol.", Gen::Words(TICKERS)),
                    req(
                        "interval",
                        "Spacing of the data points.",
                        Gen::Choice(INTERVALS),
                    ),
                    def(
                        "limit",
                        "How many data points to return.",
                        Gen::Int(5, 250),
                        Lit::Int(30),
                    ),
                ],
                templates: &[
                    "fetch {ticker}'s price history at {interval} intervals[, the last {limit} points]",
                    "pull[ the last {limit}] {interval} closing prices for {ticker}",
                    "Show me {ticker}'s closing prices with a {interval} interval.[ Limit it to {limit} data points.]",
                ],
                rules: &[],
            },
        ],
    },
    Family {
        name: "crypto",
        group: "finance",
        funcs: &[Func {
            name: "crypto_spot_price",
            description: "Current spot price of a cryptocurrency.",
            params: &[
                req("symbol", "The coin's symbol.", Gen::Choice(CRYPTO)),
                def(
                    "fiat",
                    "Currency to price it in.",
                    Gen::Choice(FIAT),
                    Lit::Str("USD"),
                ),
            ],
            templates: &[
                "get the spot price of {symbol}[ in {fiat}]",
                "check what one {symbol} is worth right now[ in {fiat}]",
                "How much is {symbol} today?[ Quote it in {fiat}.]",
            ],
            rules: &[],
        }],
    },
    Family {
        name: "banking",
        group: "finance",
        funcs: &[
            Func {
                name: "bank_transfer_initiate",
                description: "Send money from one of the user's accounts to an IBAN.",
                params: &[
                    req(
                        "from_account",
                        "The user's account to debit.",
                        Gen::Words(ACCOUNTS),
                    ),
                    req("to_iban", "IBAN of the recipient.", Gen::Words(IBANS)),
                    req("amount", "Amount to send.", Gen::Float(5.0, 5000.0, 2)),
                    req(
                        "currency",
                        "Currency of the amount.",
                        Gen::Choice(&["EUR", "CHF", "GBP", "PLN", "NOK"]),
                    ),
                    opt(
                        "reference",
                        "Payment reference shown to the recipient.",
                        Gen::Quoted(&[
                            "Rent May",
                            "Invoice 4471",
                            "Dinner 🍕",
                            "Übernachtung",
                            "Gift for Zoë",
                        ]),
                    ),
                ],
                templates: &[
                    "transfer {amount} {currency} from {from_account} to {to_iban}[ with the reference {reference}]",
                    "send {amount} {currency} to IBAN {to_iban} from my {from_account} account[, reference {reference}]",
                    "Please wire {amount} {currency} from {from_account} to {to_iban}.[ Put {reference} as the reference.]",
                ],
                rules: &[],
            },
            Func {
                name: "account_balance_check",
                description: "Current balance of one of the user's bank accounts.",
                params: &[
                    req("account", "The account identifier.", Gen::Words(ACCOUNTS)),
                    def(
                        "include_pending",
                        "Count pending transactions.",
                        Gen::Bool,
                        Lit::Bool(true),
                    ),
                ],
                templates: &[
                    "check the balance of {account}[{include_pending:, counting pending transactions|, ignoring pending transactions}]",
                    "tell me how much money is in {account}[{include_pending: including anything pending| excluding pending items}]",
                    "What's my balance on {account}?[{include_pending: Include pending payments.| Leave out pending payments.}]",
                ],
                rules: &[],
            },
        ],
    },
    Family {
        name: "loans",
        group: "finance",
        funcs: &[Func {
            name: "loan_payment_schedule",
            description: "Monthly payment and amortization schedule of a fixed-rate loan.",
            params: &[
                req(
                    "principal",
                    "Amount borrowed.",
                    Gen::Float(1000.0, 500000.0, 0),
                ),
                req(
                    "annual_rate",
                    "Yearly interest rate in percent.",
                    Gen::Float(0.5, 15.0, 2),
                ),
                req(
                    "term_months",
                    "Length of the loan in months.",
                    Gen::Int(6, 360),
                ),
                opt(
                    "extra_payment",
                    "Extra amount paid every month.",
                    Gen::Float(10.0, 1000.0, 0),
                ),
            ],
            templates: &[
                "work out the monthly payment on a {principal} loan at {annual_rate}% over {term_months} months[ with an extra {extra_payment} paid each month]",
                "build an amortization schedule for borrowing {principal} at {annual_rate} percent for {term_months} months[, paying {extra_payment} extra per month]",
                "If I borrow {principal} at {annual_rate}% interest for {term_months} months, what will I pay monthly?[ I plan to add {extra_payment} every month.]",
            ],
            rules: &[],
        }],
    },
    Family {
        name: "investing",
        group: "finance",
        funcs: &[Func {
            name: "compound_growth_projection",
            description: "Project the future value of savings with regular contributions.",
            params: &[
                req("initial", "Starting balance.", Gen::Float(0.0, 100000.0, 0)),
                req(
                    "monthly_contribution",
                    "Amount added each month.",
                    Gen::Float(0.0, 3000.0, 0),
                ),
                req(
                    "annual_return",
                    "Expected yearly return in percent.",
                    Gen::Float(0.5, 12.0, 1),
                ),
                req("years", "How many years to project.", Gen::Int(1, 50)),
                def(
                    "compounding",
                    "How often returns compound.",
                    Gen::Choice(COMPOUNDING),
                    Lit::Str("monthly"),
                ),
            ],
            templates: &[
                "project what {initial} grows to in {years} years at {annual_return}% a year with {monthly_contribution} added monthly[, compounding {compounding}]",
                "estimate my savings after {years} years starting from {initial}, adding {monthly_contribution} per month at a {annual_return}% return[ compounded {compounding}]",
                "I start with {initial} and put in {monthly_contribution} every month. At {annual_return}% per year, how much will I have after {years} years?[ Assume {compounding} compounding.]",
            ],
            rules: &[],
        }],
    },
    Family {
        name: "tax",
        group: "finance",
        funcs: &[Func {
            name: "sales_tax_for_purchase",
            description: "Sales tax owed on a purchase in a region.",
            params: &[
                req("amount", "Pre-tax price.", Gen::Float(1.0, 5000.0, 2)),
                req(
                    "region",
                    "State or province of the purchase.",
                    Gen::Words(REGIONS),
                ),
                def(
                    "tax_exempt",
                    "Whether the buyer is tax exempt.",
                    Gen::Bool,
                    Lit::Bool(false),
                ),
            ],
            templates: &[
                "calculate the sales tax on a {amount} purchase in {region}[{tax_exempt: for a tax-exempt buyer| for a regular, non-exempt buyer}]",
                "figure out how much tax I pay on {amount} in {region}[{tax_exempt:; I'm tax exempt|; I am not tax exempt}]",
                "What's the sales tax on {amount} if I buy it in {region}?[{tax_exempt: Note that we're a tax-exempt organization.| We are not tax exempt.}]",
            ],
            rules: &[],
        }],
    },
    Family {
        name: "mortgage",
        group: "finance",
        funcs: &[Func {
            name: "mortgage_affordability_estimate",
            description: "Estimate the largest home price a household can afford.",
            params: &[
                req(
                    "annual_income",
                    "Gross household income per year.",
                    Gen::Int(20000, 400000),
                ),
                req(
                    "monthly_debts",
                    "Other debt payments per month.",
                    Gen::Int(0, 5000),
                ),
                req(
                    "down_payment",
                    "Cash available for the down payment.",
                    Gen::Int(0, 300000),
                ),
                req(
                    "interest_rate",
                    "Mortgage interest rate in percent.",
                    Gen::Float(1.0, 9.0, 2),
                ),
                def(
                    "term_years",
                    "Mortgage length in years.",
                    Gen::Choice(&["15", "20", "25", "30"]),
                    Lit::Str("30"),
                ),
            ],
            templates: &[
                "estimate how much house I can afford earning {annual_income} a year with {monthly_debts} in monthly debts, {down_payment} down and a {interest_rate}% rate[ on a {term_years}-year mortgage]",
                "check what home price fits an income of {annual_income}, debts of {monthly_debts} per month, a {down_payment} down payment and {interest_rate}% interest[ over {term_years} years]",
                "We make {annual_income} per year, pay {monthly_debts} a month on other debts and have {down_payment} saved for a down payment. At {interest_rate}% what can we afford?[ Assume a {term_years}-year term.]",
            ],
            rules: &[],
        }],
    },
    Family {
        name: "geometry",
        group: "math",
        funcs: &[
            Func {
                name: "circle_metrics",
                description: "Area and circumference of a circle.",
                params: &[
                    req("radius", "Radius of the circle.", Gen::Float(0.1, 500.0, 1)),
                    def(
                        "precision",
                        "Decimal places in the result.",
                        Gen::Int(0, 8),
                        Lit::Int(2),
                    ),
                ],
                templates: &[
                    "compute the area and circumference of a circle with radius {radius}[, rounded to {precision} decimals]",
                    "find the area of a circle whose radius is {radius}[ to {precision} decimal places]",
                    "A circle has a radius of {radius}. What are its area and circumference?[ Give {precision} decimal places.]",
                ],
                rules: &[],
            },
            Func {
                name: "triangle_area_heron",
                description: "Area of a triangle from its three side lengths (Heron's formula).",
                params: &[
                    req("a", "First side length.", Gen::Float(3.0, 10.0, 1)),
                    req("b", "Second side length.", Gen::Float(3.0, 10.0, 1)),
                    req("c", "Third side length.", Gen::Float(3.0, 10.0, 1)),
                ],
                templates: &[
                    "find the area of a triangle with sides {a}, {b} and {c}",
                    "use Heron's formula on a triangle whose sides are {a}, {b} and {c}",
                    "What's the area of a triangle with side lengths {a}, {b}, and {c}?",
                ],
                rules: &[],
            },
            Func {
                name: "cuboid_volume_calc",
                description: "Volume and surface area of a rectangular box.",
                params: &[
                    req("length", "Length of the box.", Gen::Float(0.5, 50.0, 1)),
                    req("width", "Width of the box.", Gen::Float(0.5, 50.0, 1)),
                    req("height", "Height of the box.", Gen::Float(0.5, 50.0, 1)),
                    def(
                        "surface_area",
                        "Also return the surface area.",
                        Gen::Bool,
                        Lit::Bool(false),
                    ),
                ],
                templates: &[
                    "calculate the volume of a box {length} long, {width} wide and {height} high[{surface_area:, plus its surface area|, volume only}]",
                    "get the volume of a {length} by {width} by {height} cuboid[{surface_area: and its surface area| (no surface area needed)}]",
                    "How much fits in a box measuring {length} x {width} x {height}?[{surface_area: Also tell me its surface area.| I don't need the surface area.}]",
                ],
                rules: &[],
            },
        ],
    },
    Family {
        name: "statistics",
        group: "math",
        funcs: &[
            Func {
                name: "series_statistics_summary",
                description: "Summary statistics of a list of numbers.",
                params: &[
                    req(
                        "values",
                        "The numbers to summarize.",
                        Gen::FloatList(-50.0, 200.0, 1, 3, 8),
                    ),
                    opt(
                        "measures",
                        "Which statistics to compute.",
                        Gen::ChoiceList(STAT_MEASURES, 1, 3),
                    ),
                ],
                templates: &[
                    "summarize the numbers {values}[, giving the {measures}]",
                    "compute statistics for the data {values}[ (just the {measures})]",
                    "Here are my measurements: {values}. Can you summarize them?[ I need the {measures}.]",
                ],
                rules: &[],
            },
            Func {
                name: "grade_average_weighted",
                description: "Weighted average of scores.",
                params: &[
                    req("scores", "The scores.", Gen::IntList(40, 100, 2, 5)),
                    req(
                        "weights",
                        "Weight of each score, same length as scores.",
                        Gen::IntList(1, 5, 2, 5),
                    ),
                ],
                templates: &[
                    "compute the weighted average of the scores {scores} with weights {weights}",
                    "average my grades {scores} using the weights {weights}",
                    "My scores are {scores} and they count with weights {weights}. What's my weighted average?",
                ],
                rules: &[Rule::SameLength("scores", "weights")],
            },
        ],
    },
    Family {
        name: "number_theory",
        group: "math",
        funcs: &[
            Func {
                name: "integer_prime_factors",
                description: "Prime factorization of a positive integer.",
                params: &[req("n", "The integer to factor.", Gen::Int(2, 1_000_000))],
                templates: &[
                    "factor {n} into primes",
                    "find the prime factorization of {n}",
                    "What are the prime factors of {n}?",
                ],
                rules: &[],
            },
            Func {
                name: "gcd_of_integers",
                description: "Greatest common divisor of several integers.",
                params: &[req("numbers", "The integers.", Gen::IntList(2, 5000, 2, 5))],
                templates: &[
                    "find the greatest common divisor of {numbers}",
                    "compute the GCD of {numbers}",
                    "What's the largest number that divides all of {numbers}?",
                ],
                rules: &[],
            },
            Func {
                name: "combinations_count",
                description: "Number of ways to choose k items from n, with or without order.",
                params: &[
                    req("n", "Size of the set.", Gen::Int(1, 60)),
                    req("k", "How many items to choose.", Gen::Int(0, 60)),
                    def(
                        "ordered",
                        "Count ordered arrangements (permutations) instead.",
                        Gen::Bool,
                        Lit::Bool(false),
                    ),
                ],
                templates: &[
                    "count the ways to choose {k} items from {n}[{ordered: when order matters| when order does not matter}]",
                    "work out {n} choose {k}[{ordered:, counting different orders separately|, ignoring order}]",
                    "In how many ways can I pick {k} out of {n} things?[{ordered: The order matters.| Order doesn't matter.}]",
                ],
                rules: &[Rule::Before("k", "n")],
            },
        ],
    },
    Family {
        name: "physics",
        group: "science",
        funcs: &[
            Func {
                name: "projectile_range_compute",
                description: "Horizontal range and flight time of a projectile without air resistance.",
                params: &[
                    req(
                        "velocity",
                        "Launch speed in m/s.",
                        Gen::Float(1.0, 120.0, 1),
                    ),
                    req("angle_deg", "Launch angle in degrees.", Gen::Int(5, 85)),
                    def(
                        "height",
                        "Launch height in meters.",
                        Gen::Float(0.5, 50.0, 1),
                        Lit::Float(0.0),
                    ),
                ],
                templates: &[
                    "compute how far a projectile launched at {velocity} m/s and {angle_deg} degrees travels[ from a height of {height} m]",
                    "find the range of something thrown at {velocity} m/s at a {angle_deg}° angle[, starting {height} meters up]",
                    "A ball leaves at {velocity} m/s with an angle of {angle_deg} degrees. How far does it go?[ It is launched from {height} m above the ground.]",
                ],
                rules: &[],
            },
            Func {
                name: "ideal_gas_pressure",
                description: "Pressure of an ideal gas from PV = nRT.",
                params: &[
                    req("moles", "Amount of gas in mol.", Gen::Float(0.1, 20.0, 2)),
                    req(
                        "temperature_k",
                        "Temperature in kelvin.",
                        Gen::Float(150.0, 900.0, 1),
                    ),
                    req("volume_l", "Volume in liters.", Gen::Float(0.5, 100.0, 1)),
                ],
                templates: &[
                    "find the pressure of {moles} mol of an ideal gas at {temperature_k} K in {volume_l} L",
                    "use the ideal gas law for {moles} moles in a {volume_l} liter container at {temperature_k} kelvin",
                    "What pressure do {moles} mol of gas exert in {volume_l} L at {temperature_k} K?",
                ],
                rules: &[],
            },
        ],
    },
    Family {
        name: "units",
        group: "units",
        funcs: &[
            Func {
                name: "length_unit_convert",
                description: "Convert a length between units.",
                params: &[
                    req(
                        "value",
                        "The length to convert.",
                        Gen::Float(0.1, 10000.0, 2),
                    ),
                    req("from_unit", "Unit of the value.", Gen::Choice(LENGTH_UNITS)),
                    req("to_unit", "Unit to convert to.", Gen::Choice(LENGTH_UNITS)),
                ],
                templates: &[
                    "convert {value} {from_unit} to {to_unit}",
                    "tell me how many {to_unit} are in {value} {from_unit}",
                    "How long is {value} {from_unit} in {to_unit}?",
                ],
                rules: &[Rule::Differ("from_unit", "to_unit")],
            },
            Func {
                name: "temperature_scale_convert",
                description: "Convert a temperature between scales.",
                params: &[
                    req("value", "The temperature.", Gen::Float(-80.0, 500.0, 1)),
                    req(
                        "from_scale",
                        "Scale of the value.",
                        Gen::Choice(TEMP_SCALES),
                    ),
                    req("to_scale", "Scale to convert to.", Gen::Choice(TEMP_SCALES)),
                ],
                templates: &[
                    "convert {value} degrees {from_scale} to {to_scale}",
                    "express {value} in {from_scale} on the {to_scale} scale",
                    "What is {value} {from_scale} in {to_scale}?",
                ],
                rules: &[Rule::Differ("from_scale", "to_scale")],
            },
        ],
    },
    Family {
        name: "calendar",
        group: "productivity",
        funcs: &[
            Func {
                name: "calendar_entry_schedule",
                description: "Add an event to the user's calendar.",
                params: &[
                    req(
                        "title",
                        "Title of the event.",
                        Gen::Quoted(&[
                            "Team sync",
                            "Dentist",
                            "Zoë's birthday dinner",
                            "Quarterly review",
                            "Yoga class",
                            "Call with São Paulo office",
                        ]),
                    ),
                    req("date", "Day of the event, YYYY-MM-DD.", Gen::Date),
                    req("start_time", "Start time, HH:MM (24-hour).", Gen::Time),
                    def(
                        "duration_minutes",
                        "Length of the event in minutes.",
                        Gen::Int(15, 240),
                        Lit::Int(60),
                    ),
                    opt(
                        "attendees",
                        "Email addresses to invite.",
                        Gen::WordList(EMAILS, 1, 3),
                    ),
                    opt(
                        "recurrence",
                        "Repetition rule: an object with frequency (daily, weekly or monthly) and count.",
                        Gen::Custom(Ty::Dict, recurrence),
                    ),
                ],
                templates: &[
                    "schedule {title} on {date} at {start_time}[ for {duration_minutes} minutes][, inviting {attendees}][, {recurrence}]",
                    "add {title} to my calendar for {date} at {start_time}[, lasting {duration_minutes} minutes][ and invite {attendees}]",
                    "Put {title} in my calendar on {date} starting {start_time}.[ It takes {duration_minutes} minutes.][ Make it {recurrence}.]",
                ],
                rules: &[],
            },
            Func {
                name: "calendar_free_slots_find",
                description: "Find times on a day when all the given people are free.",
                params: &[
                    req("date", "Day to search, YYYY-MM-DD.", Gen::Date),
                    req(
                        "duration_minutes",
                        "Length of the slot needed in minutes.",
                        Gen::Int(15, 180),
                    ),
                    req(
                        "attendees",
                        "Email addresses of everyone who must attend.",
                        Gen::WordList(EMAILS, 1, 4),
                    ),
                ],
                templates: &[
                    "find a free {duration_minutes}-minute slot on {date} for {attendees}",
                    "look for {duration_minutes} minutes on {date} when {attendees} are all available",
                    "When on {date} can {attendees} meet for {duration_minutes} minutes?",
                ],
                rules: &[],
            },
        ],
    },
    Family {
        name: "timezones",
        group: "time",
        funcs: &[Func {
            name: "timezone_clock_convert",
            description: "Convert a time of day between IANA time zones.",
            params: &[
                req("time", "Time of day, HH:MM (24-hour).", Gen::Time),
                req(
                    "from_timezone",
                    "IANA zone of the given time.",
                    Gen::Words(TIMEZONES),
                ),
                req(
                    "to_timezone",
                    "IANA zone to convert to.",
                    Gen::Words(TIMEZONES),
                ),
                opt(
                    "date",
                    "Day the time falls on, YYYY-MM-DD, for daylight saving.",
                    Gen::Date,
                ),
            ],
            templates: &[
                "convert {time} {from_timezone} time to {to_timezone}[ on {date}]",
                "tell me what time it is in {to_timezone} when it's {time} in {from_timezone}[ on {date}]",
                "If it's {time} in {from_timezone}, what time is it in {to_timezone}?[ The date is {date}.]",
            ],
            rules: &[Rule::Differ("from_timezone", "to_timezone")],
        }],
    },
    Family {
        name: "dates",
        group: "time",
        funcs: &[
            Func {
                name: "date_offset_compute",
                description: "The date a number of days after a start date.",
                params: &[
                    req("start_date", "Start date, YYYY-MM-DD.", Gen::Date),
                    req(
                        "days",
                        "Days to add; negative goes back.",
                        Gen::Int(-400, 400),
                    ),
                    def(
                        "business_days_only",
                        "Count only Monday to Friday.",
                        Gen::Bool,
                        Lit::Bool(false),
                    ),
                ],
                templates: &[
                    "add {days} days to {start_date}[{business_days_only:, counting business days only|, counting every calendar day}]",
                    "work out the date {days} days from {start_date}[{business_days_only: in working days| in calendar days}]",
                    "What date is {days} days after {start_date}?[{business_days_only: Only count weekdays.| Weekends count too.}]",
                ],
                rules: &[],
            },
            Func {
                name: "days_between_dates",
                description: "Number of days between two dates.",
                params: &[
                    req("start", "Earlier date, YYYY-MM-DD.", Gen::Date),
                    req("end", "Later date, YYYY-MM-DD.", Gen::Date),
                    def(
                        "inclusive",
                        "Count both end points.",
                        Gen::Bool,
                        Lit::Bool(false),
                    ),
                ],
                templates: &[
                    "count the days between {start} and {end}[{inclusive:, inclusive of both dates|, not counting the end date}]",
                    "figure out how many days separate {start} from {end}[{inclusive: (include both ends)| (exclusive)}]",
                    "How many days are there from {start} to {end}?[{inclusive: Count both days.| Don't count the last day.}]",
                ],
                rules: &[Rule::Before("start", "end")],
            },
        ],
    },
    Family {
        name: "web_search",
        group: "search",
        funcs: &[Func {
            name: "web_pages_search",
            description: "Search the web and return matching pages.",
            params: &[
                req("query", "What to search for.", Gen::Quoted(SEARCH_QUERIES)),
                def(
                    "max_results",
                    "How many results to return.",
                    Gen::Int(1, 50),
                    Lit::Int(10),
                ),
                def(
                    "safe_search",
                    "Filter explicit results.",
                    Gen::Bool,
                    Lit::Bool(true),
                ),
                opt(
                    "language",
                    "Language code of the results.",
                    Gen::Choice(SEARCH_LANGS),
                ),
            ],
            templates: &[
                "search the web for {query}[, top {max_results} results][{safe_search:, safe search on|, safe search off}]",
                "look up {query} online[ in language {language}][ and give me {max_results} hits]",
                "Can you find pages about {query}?[ Only results in {language}, please.][{safe_search: Keep safe search enabled.| Turn safe search off.}]",
            ],
            rules: &[],
        }],
    },
    Family {
        name: "news",
        group: "info",
        funcs: &[Func {
            name: "headline_feed_fetch",
            description: "Latest news headlines on a topic.",
            params: &[
                req("topic", "News topic.", Gen::Choice(NEWS_TOPICS)),
                opt("country", "Country to focus on.", Gen::Words(COUNTRIES)),
                def(
                    "limit",
                    "Number of headlines.",
                    Gen::Int(1, 20),
                    Lit::Int(5),
                ),
            ],
            templates: &[
                "get the latest {topic} headlines[ from {country}][, {limit} of them]",
                "fetch[ {limit}] {topic} news stories[ about {country}]",
                "What's new in {topic} today?[ Focus on {country}.][ Give me {limit} headlines.]",
            ],
            rules: &[],
        }],
    },
    Family {
        name: "dictionary",
        group: "language",
        funcs: &[Func {
            name: "word_definition_lookup",
            description: "Definitions and usage examples of a word.",
            params: &[
                req("word", "The word to define.", Gen::Words(WORDS)),
                def(
                    "include_examples",
                    "Add example sentences.",
                    Gen::Bool,
                    Lit::Bool(false),
                ),
            ],
            templates: &[
                "define the word {word}[{include_examples: with example sentences| without examples}]",
                "look up what {word} means[{include_examples: and show how it's used| (definition only)}]",
                "What does {word} mean?[{include_examples: Give me some example sentences too.| No examples needed.}]",
            ],
            rules: &[],
        }],
    },
    Family {
        name: "translation",
        group: "language",
        funcs: &[Func {
            name: "text_translate_between",
            description: "Translate text from one language to another.",
            params: &[
                req("text", "The text to translate.", Gen::Quoted(TEXTS)),
                req(
                    "target_language",
                    "Language to translate into.",
                    Gen::Choice(LANGUAGES),
                ),
                opt(
                    "source_language",
                    "Language of the text; detected when absent.",
                    Gen::Choice(LANGUAGES),
                ),
                def(
                    "formal",
                    "Use a formal register.",
                    Gen::Bool,
                    Lit::Bool(false),
                ),
            ],
            templates: &[
                "translate {text}[ from {source_language}] into {target_language}[{formal:, formally|, casually}]",
                "render {text} in {target_language}[ (the original is {source_language})]",
                "How do you say {text} in {target_language}?[{formal: Keep it formal.| Informal is fine.}]",
            ],
            rules: &[Rule::Differ("source_language", "target_language")],
        }],
    },
    Family {
        name: "files",
        group: "files",
        funcs: &[
            Func {
                name: "file_store_list_folder",
                description: "List the files in a folder.",
                params: &[
                    req("path", "Folder to list.", Gen::Words(FOLDERS)),
                    def(
                        "recursive",
                        "Include subfolders.",
                        Gen::Bool,
                        Lit::Bool(false),
                    ),
                    opt(
                        "extension",
                        "Only files with this extension, without the dot.",
                        Gen::Words(EXTENSIONS),
                    ),
                ],
                templates: &[
                    "list the files in {path}[{recursive:, including subfolders|, top level only}][ that end in .{extension}]",
                    "show me what's inside {path}[ (only {extension} files)][{recursive: and walk all subdirectories| without descending into subdirectories}]",
                    "Which files are in the folder {path}?[ I only want the .{extension} ones.]",
                ],
                rules: &[],
            },
            Func {
                name: "file_store_rename",
                description: "Rename a file, keeping it in its folder.",
                params: &[
                    req("path", "The file to rename.", Gen::Words(FILES)),
                    req(
                        "new_name",
                        "New file name, without a folder.",
                        Gen::Words(NEW_NAMES),
                    ),
                    def(
                        "overwrite",
                        "Replace a file that already has the new name.",
                        Gen::Bool,
                        Lit::Bool(false),
                    ),
                ],
                templates: &[
                    "rename {path} to {new_name}[{overwrite:, overwriting any existing file|, but don't overwrite anything}]",
                    "change the name of {path} to {new_name}[{overwrite: even if that name is taken| unless that name is taken}]",
                    "Please rename the file {path} so it's called {new_name}.[{overwrite: Overwrite if needed.| Do not overwrite an existing file.}]",
                ],
                rules: &[],
            },
            Func {
                name: "file_store_archive",
                description: "Pack files into one compressed archive.",
                params: &[
                    req("paths", "Files to include.", Gen::WordList(FILES, 1, 3)),
                    req(
                        "archive_name",
                        "Name of the archive, without extension.",
                        Gen::Words(ARCHIVE_NAMES),
                    ),
                    def(
                        "format",
                        "Archive format.",
                        Gen::Choice(ARCHIVE_FORMATS),
                        Lit::Str("zip"),
                    ),
                ],
                templates: &[
                    "archive {paths} into {archive_name}[ as {format}]",
                    "compress {paths} into an archive called {archive_name}[ using {format}]",
                    "Bundle {paths} into one archive named {archive_name}.[ Use the {format} format.]",
                ],
                rules: &[],
            },
        ],
    },
    Family {
        name: "chat",
        group: "messaging",
        funcs: &[Func {
            name: "chat_message_post",
            description: "Post a message in a team chat channel.",
            params: &[
                req(
                    "channel",
                    "Channel name, with the leading #.",
                    Gen::Words(CHANNELS),
                ),
                req("text", "The message.", Gen::Quoted(CHAT_TEXTS)),
                opt(
                    "mention_users",
                    "Handles to mention, with the leading @.",
                    Gen::WordList(HANDLES, 1, 3),
                ),
            ],
            templates: &[
                "post {text} in {channel}[ and mention {mention_users}]",
                "send the message {text} to the {channel} channel[, tagging {mention_users}]",
                "Write {text} in {channel}, please.[ Tag {mention_users}.]",
            ],
            rules: &[],
        }],
    },
    Family {
        name: "sms",
        group: "messaging",
        funcs: &[Func {
            name: "sms_text_dispatch",
            description: "Send a text message to a phone number.",
            params: &[
                req(
                    "phone_number",
                    "Recipient in international format.",
                    Gen::Words(PHONES),
                ),
                req("body", "Text of the message.", Gen::Quoted(SMS_TEXTS)),
                def(
                    "flash",
                    "Show it immediately on screen without storing it.",
                    Gen::Bool,
                    Lit::Bool(false),
                ),
            ],
            templates: &[
                "text {phone_number} saying {body}[{flash: as a flash message| as a normal message}]",
                "send an SMS to {phone_number}: {body}[{flash: (flash)| (regular, not flash)}]",
                "Please send {body} by SMS to {phone_number}.[{flash: Make it a flash SMS.| A normal SMS is fine.}]",
            ],
            rules: &[],
        }],
    },
    Family {
        name: "email",
        group: "messaging",
        funcs: &[Func {
            name: "mail_compose_send",
            description: "Compose and send an email.",
            params: &[
                req("to", "Recipient addresses.", Gen::WordList(EMAILS, 1, 3)),
                req("subject", "Subject line.", Gen::Quoted(SUBJECTS)),
                req("body", "Body text.", Gen::Quoted(BODIES)),
                opt("cc", "Addresses to copy.", Gen::WordList(EMAILS, 1, 2)),
                def(
                    "priority",
                    "Importance flag.",
                    Gen::Choice(PRIORITIES),
                    Lit::Str("normal"),
                ),
            ],
            templates: &[
                "email {to} with the subject {subject} and the body {body}[, cc {cc}][, {priority} priority]",
                "send an email to {to}, subject {subject}, saying {body}[ (copy {cc})]",
                "Write to {to} with subject {subject}: {body}[ Mark it {priority} priority.][ CC {cc}.]",
            ],
            rules: &[],
        }],
    },
    Family {
        name: "contacts",
        group: "messaging",
        funcs: &[Func {
            name: "address_book_find",
            description: "Look someone up in the user's contacts.",
            params: &[
                req("name", "Full or partial name.", Gen::Words(PEOPLE)),
                opt(
                    "field",
                    "Return only this field.",
                    Gen::Choice(CONTACT_FIELDS),
                ),
            ],
            templates: &[
                "look up {name} in my contacts[ and give me their {field}]",
                "find the contact card for {name}[, just the {field}]",
                "Do I have {name} saved in my address book?[ I need their {field}.]",
            ],
            rules: &[],
        }],
    },
    Family {
        name: "flights",
        group: "travel",
        funcs: &[Func {
            name: "flight_offers_search",
            description: "Search flight offers between two airports.",
            params: &[
                req(
                    "origin",
                    "IATA code of the departure airport.",
                    Gen::Words(AIRPORTS),
                ),
                req(
                    "destination",
                    "IATA code of the arrival airport.",
                    Gen::Words(AIRPORTS),
                ),
                req("departure_date", "Outbound date, YYYY-MM-DD.", Gen::Date),
                opt(
                    "return_date",
                    "Return date, YYYY-MM-DD; one way when absent.",
                    Gen::Date,
                ),
                def(
                    "passengers",
                    "Number of adult passengers.",
                    Gen::Int(1, 9),
                    Lit::Int(1),
                ),
                def(
                    "cabin",
                    "Cabin class.",
                    Gen::Choice(CABINS),
                    Lit::Str("economy"),
                ),
            ],
            templates: &[
                "search flights from {origin} to {destination} on {departure_date}[ returning {return_date}][ for {passengers} passengers][ in {cabin}]",
                "find me a flight {origin} → {destination} leaving {departure_date}[, back on {return_date}][, {cabin} class]",
                "Are there flights from {origin} to {destination} on {departure_date}?[ We are {passengers} adults.][ Return on {return_date}.]",
            ],
            rules: &[
                Rule::Differ("origin", "destination"),
                Rule::Before("departure_date", "return_date"),
            ],
        }],
    },
    Family {
        name: "hotels",
        group: "travel",
        funcs: &[Func {
            name: "lodging_availability_search",
            description: "Find available hotel rooms in a city.",
            params: &[
                req("city", "City to stay in.", Gen::Words(CITIES)),
                req("check_in", "Arrival date, YYYY-MM-DD.", Gen::Date),
                req("check_out", "Departure date, YYYY-MM-DD.", Gen::Date),
                def("guests", "Number of guests.", Gen::Int(1, 6), Lit::Int(2)),
                opt(
                    "amenities",
                    "Required amenities.",
                    Gen::ChoiceList(AMENITIES, 1, 3),
                ),
                opt(
                    "max_price",
                    "Highest nightly price.",
                    Gen::Float(40.0, 600.0, 0),
                ),
            ],
            templates: &[
                "find a hotel in {city} from {check_in} to {check_out}[ for {guests} guests][ with {amenities}][ under {max_price} a night]",
                "look for rooms in {city} checking in {check_in} and out {check_out}[, max {max_price} per night]",
                "I need somewhere to stay in {city} between {check_in} and {check_out}.[ There will be {guests} of us.][ It must have {amenities}.]",
            ],
            rules: &[Rule::Before("check_in", "check_out")],
        }],
    },
    Family {
        name: "car_rental",
        group: "travel",
        funcs: &[Func {
            name: "rental_car_quote",
            description: "Quote for renting a car.",
            params: &[
                req(
                    "pickup_city",
                    "Where the car is collected.",
                    Gen::Words(CITIES),
                ),
                req("pickup_date", "Collection date, YYYY-MM-DD.", Gen::Date),
                req("return_date", "Return date, YYYY-MM-DD.", Gen::Date),
                opt("car_class", "Vehicle category.", Gen::Choice(CAR_CLASSES)),
                def(
                    "unlimited_mileage",
                    "Quote with unlimited mileage.",
                    Gen::Bool,
                    Lit::Bool(true),
                ),
            ],
            templates: &[
                "get a rental car quote in {pickup_city} from {pickup_date} to {return_date}[ for a {car_class} car][{unlimited_mileage: with unlimited mileage| with limited mileage}]",
                "price a car hire picking up in {pickup_city} on {pickup_date} and returning {return_date}[ ({car_class})]",
                "How much is it to rent a car in {pickup_city} from {pickup_date} until {return_date}?[ I'd like a {car_class}.]",
            ],
            rules: &[Rule::Before("pickup_date", "return_date")],
        }],
    },
    Family {
        name: "trains",
        group: "travel",
        funcs: &[Func {
            name: "rail_timetable_lookup",
            description: "Train connections between two stations.",
            params: &[
                req("from_station", "Departure station.", Gen::Words(STATIONS)),
                req("to_station", "Arrival station.", Gen::Words(STATIONS)),
                req("date", "Travel date, YYYY-MM-DD.", Gen::Date),
                opt(
                    "depart_after",
                    "Earliest departure, HH:MM (24-hour).",
                    Gen::Time,
                ),
                def(
                    "direct_only",
                    "Only connections without changes.",
                    Gen::Bool,
                    Lit::Bool(false),
                ),
            ],
            templates: &[
                "find trains from {from_station} to {to_station} on {date}[ leaving after {depart_after}][{direct_only:, direct only|, changes are fine}]",
                "look up rail connections {from_station} – {to_station} for {date}[ after {depart_after}]",
                "When can I take the train from {from_station} to {to_station} on {date}?[ Not before {depart_after}.][{direct_only: I want a direct train.| Changing trains is OK.}]",
            ],
            rules: &[Rule::Differ("from_station", "to_station")],
        }],
    },
    Family {
        name: "routing",
        group: "travel",
        funcs: &[
            Func {
                name: "route_travel_time",
                description: "Travel time and distance between two places.",
                params: &[
                    req("origin", "Start address or place.", Gen::Words(ADDRESSES)),
                    req(
                        "destination",
                        "End address or place.",
                        Gen::Words(ADDRESSES),
                    ),
                    def(
                        "mode",
                        "How to travel.",
                        Gen::Choice(TRAVEL_MODES),
                        Lit::Str("driving"),
                    ),
                    def(
                        "avoid_tolls",
                        "Avoid toll roads.",
                        Gen::Bool,
                        Lit::Bool(false),
                    ),
                ],
                templates: &[
                    "get the travel time from {origin} to {destination}[ by {mode}][{avoid_tolls:, avoiding tolls|, tolls allowed}]",
                    "work out how long it takes to get from {origin} to {destination}[ when {mode}]",
                    "How far is {origin} from {destination}?[ I'll be {mode}.]",
                ],
                rules: &[Rule::Differ("origin", "destination")],
            },
            Func {
                name: "nearby_places_lookup",
                description: "Places of a kind near a location.",
                params: &[
                    req(
                        "location",
                        "Address or place to search around.",
                        Gen::Words(ADDRESSES),
                    ),
                    req("category", "Kind of place.", Gen::Choice(PLACE_KINDS)),
                    def(
                        "radius_m",
                        "Search radius in meters.",
                        Gen::Int(100, 5000),
                        Lit::Int(1000),
                    ),
                    def(
                        "open_now",
                        "Only places open now.",
                        Gen::Bool,
                        Lit::Bool(false),
                    ),
                ],
                templates: &[
                    "find a {category} near {location}[ within {radius_m} meters][{open_now: that is open now| whether or not it's open}]",
                    "search for places of type {category} around {location}[, radius {radius_m} m]",
                    "Is there a {category} close to {location}?[ No more than {radius_m} m away.][{open_now: It has to be open right now.| Opening hours don't matter.}]",
                ],
                rules: &[],
            },
        ],
    },
    Family {
        name: "geocoding",
        group: "travel",
        funcs: &[
            Func {
                name: "place_coordinates_resolve",
                description: "Latitude and longitude of an address.",
                params: &[
                    req("address", "The address to resolve.", Gen::Words(ADDRESSES)),
                    opt(
                        "country_hint",
                        "Country to prefer when the address is ambiguous.",
                        Gen::Words(COUNTRIES),
                    ),
                ],
                templates: &[
                    "get the coordinates of {address}[, preferring matches in {country_hint}]",
                    "geocode {address}[ (it's in {country_hint})]",
                    "What are the latitude and longitude of {address}?[ It should be in {country_hint}.]",
                ],
                rules: &[],
            },
            Func {
                name: "distance_between_coordinates",
                description: "Great-circle distance between two points given as (latitude, longitude).",
                params: &[
                    req(
                        "point_a",
                        "First point as (latitude, longitude).",
                        Gen::Custom(Ty::FloatPair, coordinates),
                    ),
                    req(
                        "point_b",
                        "Second point as (latitude, longitude).",
                        Gen::Custom(Ty::FloatPair, coordinates),
                    ),
                    def(
                        "unit",
                        "Unit of the result.",
                        Gen::Choice(&["km", "mi", "nmi"]),
                        Lit::Str("km"),
                    ),
                ],
                templates: &[
                    "compute the distance between {point_a} and {point_b}[ in {unit}]",
                    "measure how far {point_a} is from {point_b} as the crow flies[, in {unit}]",
                    "What's the great-circle distance from {point_a} to {point_b}?[ Answer in {unit}.]",
                ],
                rules: &[Rule::Differ("point_a", "point_b")],
            },
        ],
    },
    Family {
        name: "recipes",
        group: "food",
        funcs: &[
            Func {
                name: "recipe_finder_by_ingredients",
                description: "Find recipes that use the given ingredients.",
                params: &[
                    req(
                        "ingredients",
                        "Ingredients to use.",
                        Gen::WordList(INGREDIENTS, 1, 4),
                    ),
                    opt("cuisine", "Cuisine to stick to.", Gen::Choice(CUISINES)),
                    opt(
                        "max_prep_minutes",
                        "Longest acceptable preparation time in minutes.",
                        Gen::Int(10, 120),
                    ),
                    def(
                        "vegetarian",
                        "Only vegetarian recipes.",
                        Gen::Bool,
                        Lit::Bool(false),
                    ),
                ],
                templates: &[
                    "find recipes with {ingredients}[ from {cuisine} cuisine][ that take under {max_prep_minutes} minutes][{vegetarian:, vegetarian only|, meat is fine}]",
                    "suggest something to cook using {ingredients}[, ready in {max_prep_minutes} minutes][, {cuisine} style]",
                    "What can I make with {ingredients}?[ Something {cuisine} would be nice.][{vegetarian: It has to be vegetarian.| I eat meat too.}]",
                ],
                rules: &[],
            },
            Func {
                name: "recipe_scale_servings",
                description: "Rescale a saved recipe's ingredient amounts to a number of servings.",
                params: &[
                    req(
                        "recipe_name",
                        "Name of the saved recipe.",
                        Gen::Quoted(RECIPES),
                    ),
                    req("servings", "Servings wanted.", Gen::Int(1, 24)),
                ],
                templates: &[
                    "scale the recipe {recipe_name} to {servings} servings",
                    "adjust {recipe_name} so it feeds {servings} people",
                    "I'm cooking {recipe_name} for {servings}. Can you rescale the ingredients?",
                ],
                rules: &[],
            },
            Func {
                name: "kitchen_measure_convert",
                description: "Convert a cooking quantity between measures for a given ingredient.",
                params: &[
                    req("quantity", "The amount.", Gen::Float(0.25, 1000.0, 2)),
                    req(
                        "ingredient",
                        "What is being measured (density matters).",
                        Gen::Words(BAKING_ITEMS),
                    ),
                    req(
                        "from_measure",
                        "Measure of the quantity.",
                        Gen::Choice(KITCHEN_MEASURES),
                    ),
                    req(
                        "to_measure",
                        "Measure to convert to.",
                        Gen::Choice(KITCHEN_MEASURES),
                    ),
                ],
                templates: &[
                    "convert {quantity} {from_measure} of {ingredient} to {to_measure}",
                    "tell me how many {to_measure} {quantity} {from_measure} of {ingredient} is",
                    "My recipe says {quantity} {from_measure} of {ingredient}. How much is that in {to_measure}?",
                ],
                rules: &[Rule::Differ("from_measure", "to_measure")],
            },
        ],
    },
    Family {
        name: "restaurants",
        group: "food",
        funcs: &[Func {
            name: "dining_table_reserve",
            description: "Reserve a table at a restaurant.",
            params: &[
                req(
                    "restaurant",
                    "Name of the restaurant.",
                    Gen::Quoted(RESTAURANTS),
                ),
                req("date", "Day of the booking, YYYY-MM-DD.", Gen::Date),
                req("time", "Time of the booking, HH:MM (24-hour).", Gen::Time),
                req("party_size", "Number of people.", Gen::Int(1, 12)),
                opt(
                    "notes",
                    "Requests for the restaurant.",
                    Gen::Quoted(&[
                        "window seat please",
                        "one guest is gluten-free",
                        "it's a birthday 🎂",
                        "high chair needed",
                    ]),
                ),
            ],
            templates: &[
                "book a table for {party_size} at {restaurant} on {date} at {time}[ with the note {notes}]",
                "reserve {restaurant} for {party_size} people on {date}, {time}[, and tell them {notes}]",
                "Can I get a table at {restaurant} for {party_size} on {date} at {time}?[ Add the request {notes}.]",
            ],
            rules: &[],
        }],
    },
    Family {
        name: "nutrition",
        group: "food",
        funcs: &[Func {
            name: "food_nutrient_facts",
            description: "Nutrition facts for an amount of a food.",
            params: &[
                req("food", "The food.", Gen::Words(FOODS)),
                req("grams", "Amount in grams.", Gen::Float(5.0, 1000.0, 0)),
                opt(
                    "nutrients",
                    "Only these nutrients.",
                    Gen::ChoiceList(NUTRIENTS, 1, 3),
                ),
            ],
            templates: &[
                "get nutrition facts for {grams} g of {food}[, just the {nutrients}]",
                "look up the nutrients in {grams} grams of {food}[ (only {nutrients})]",
                "How nutritious are {grams} grams of {food}?[ I'm tracking {nutrients}.]",
            ],
            rules: &[],
        }],
    },
    Family {
        name: "fitness",
        group: "health",
        funcs: &[Func {
            name: "workout_calories_estimate",
            description: "Estimate calories burned by an activity.",
            params: &[
                req("activity", "The activity.", Gen::Choice(ACTIVITIES)),
                req(
                    "duration_minutes",
                    "How long, in minutes.",
                    Gen::Int(5, 240),
                ),
                req(
                    "weight_kg",
                    "Body weight in kilograms.",
                    Gen::Float(40.0, 150.0, 1),
                ),
                opt(
                    "intensity",
                    "Effort level.",
                    Gen::Choice(&["light", "moderate", "vigorous"]),
                ),
            ],
            templates: &[
                "estimate the calories burned doing {activity} for {duration_minutes} minutes at {weight_kg} kg[ with {intensity} effort]",
                "work out how many calories a {weight_kg} kg person uses doing {duration_minutes} minutes of {activity}[ at {intensity} intensity]",
                "I weigh {weight_kg} kg and did {duration_minutes} minutes of {activity}. How many calories did I burn?[ It was {intensity}.]",
            ],
            rules: &[],
        }],
    },
    Family {
        name: "body_metrics",
        group: "health",
        funcs: &[Func {
            name: "body_mass_index_calc",
            description: "Body mass index from weight and height.",
            params: &[
                req(
                    "weight_kg",
                    "Body weight in kilograms.",
                    Gen::Float(30.0, 200.0, 1),
                ),
                req("height_cm", "Height in centimeters.", Gen::Int(120, 215)),
                def(
                    "classify",
                    "Also return the WHO category.",
                    Gen::Bool,
                    Lit::Bool(true),
                ),
            ],
            templates: &[
                "calculate the BMI for {weight_kg} kg and {height_cm} cm[{classify: with the WHO category| without any category}]",
                "work out my body mass index: {weight_kg} kg, {height_cm} cm tall[{classify:, and tell me the category|, number only}]",
                "I'm {height_cm} cm tall and weigh {weight_kg} kg. What's my BMI?[{classify: Which category is that?| Just the number, please.}]",
            ],
            rules: &[],
        }],
    },
    Family {
        name: "pharmacy",
        group: "health",
        funcs: &[Func {
            name: "medication_interaction_check",
            description: "Known interactions between medications.",
            params: &[
                req(
                    "medications",
                    "Generic names of the medications.",
                    Gen::WordList(MEDICATIONS, 2, 4),
                ),
                def(
                    "severity_threshold",
                    "Lowest severity to report.",
                    Gen::Choice(&["minor", "moderate", "major"]),
                    Lit::Str("moderate"),
                ),
            ],
            templates: &[
                "check for interactions between {medications}[, reporting {severity_threshold} and above]",
                "see whether {medications} can be taken together[ (show {severity_threshold} or worse)]",
                "Is it safe to combine {medications}?[ Only flag {severity_threshold} interactions or worse.]",
            ],
            rules: &[],
        }],
    },
    Family {
        name: "sports",
        group: "sports",
        funcs: &[
            Func {
                name: "league_standings_table",
                description: "League table of a football league for a season.",
                params: &[
                    req("league", "The league.", Gen::Choice(LEAGUES)),
                    req("season", "Year the season started.", Gen::Int(1995, 2025)),
                    opt("top", "Only the first N teams.", Gen::Int(1, 20)),
                ],
                templates: &[
                    "show the {league} table for the {season} season[, top {top} only]",
                    "get the standings of {league} in {season}[ (first {top} teams)]",
                    "Who was leading {league} in the season starting {season}?[ Show me the top {top}.]",
                ],
                rules: &[],
            },
            Func {
                name: "match_fixture_results",
                description: "A team's matches and results on a date.",
                params: &[
                    req("team", "Team name.", Gen::Words(TEAMS)),
                    req("date", "Match day, YYYY-MM-DD.", Gen::Date),
                    def(
                        "include_lineups",
                        "Include starting lineups.",
                        Gen::Bool,
                        Lit::Bool(false),
                    ),
                ],
                templates: &[
                    "get {team}'s match result on {date}[{include_lineups: with lineups| without lineups}]",
                    "find out how {team} played on {date}[{include_lineups:, including who started|, score only}]",
                    "Did {team} win on {date}?[{include_lineups: Show me the starting lineups too.| No lineups needed.}]",
                ],
                rules: &[],
            },
        ],
    },
    Family {
        name: "shipping",
        group: "shipping",
        funcs: &[
            Func {
                name: "parcel_rate_estimate",
                description: "Price of shipping a parcel.",
                params: &[
                    req(
                        "origin_postcode",
                        "Sender's postal code.",
                        Gen::Words(POSTCODES),
                    ),
                    req(
                        "destination_postcode",
                        "Recipient's postal code.",
                        Gen::Words(POSTCODES),
                    ),
                    req(
                        "weight_kg",
                        "Parcel weight in kilograms.",
                        Gen::Float(0.1, 30.0, 1),
                    ),
                    req(
                        "dimensions",
                        "Parcel size: an object with length_cm, width_cm and height_cm (integers).",
                        Gen::Custom(Ty::Dict, package_dimensions),
                    ),
                    def(
                        "service",
                        "Delivery speed.",
                        Gen::Choice(SHIP_SERVICES),
                        Lit::Str("standard"),
                    ),
                ],
                templates: &[
                    "quote shipping a {weight_kg} kg parcel, {dimensions}, from {origin_postcode} to {destination_postcode}[ by {service}]",
                    "estimate the cost of sending a {dimensions} package weighing {weight_kg} kg from postcode {origin_postcode} to {destination_postcode}[ ({service} service)]",
                    "How much to ship {weight_kg} kg from {origin_postcode} to {destination_postcode}? The box is {dimensions}.[ Use {service} delivery.]",
                ],
                rules: &[Rule::Differ("origin_postcode", "destination_postcode")],
            },
            Func {
                name: "parcel_tracking_status",
                description: "Where a shipment is now.",
                params: &[
                    req(
                        "tracking_number",
                        "The shipment's tracking number.",
                        Gen::Custom(Ty::Str, tracking_number),
                    ),
                    opt("carrier", "Carrier, when known.", Gen::Choice(CARRIERS)),
                ],
                templates: &[
                    "track parcel {tracking_number}[ with {carrier}]",
                    "check where shipment {tracking_number} is[ (carrier: {carrier})]",
                    "Where is my package {tracking_number}?[ It was sent with {carrier}.]",
                ],
                rules: &[],
            },
            Func {
                name: "parcel_pickup_book",
                description: "Book a courier pickup at an address.",
                params: &[
                    req(
                        "address",
                        "Pickup address: an object with street, postal_code and city.",
                        Gen::Custom(Ty::Dict, delivery_address),
                    ),
                    req("date", "Pickup day, YYYY-MM-DD.", Gen::Date),
                    def(
                        "parcels",
                        "Number of parcels.",
                        Gen::Int(1, 10),
                        Lit::Int(1),
                    ),
                ],
                templates: &[
                    "book a courier pickup at {address} on {date}[ for {parcels} parcels]",
                    "arrange for a parcel collection from {address} on {date}[, {parcels} packages]",
                    "Can a courier come to {address} on {date}?[ There are {parcels} parcels.]",
                ],
                rules: &[],
            },
        ],
    },
    Family {
        name: "shopping",
        group: "shopping",
        funcs: &[
            Func {
                name: "product_catalog_search",
                description: "Search the shop's product catalog.",
                params: &[
                    req(
                        "keywords",
                        "What to look for.",
                        Gen::Quoted(PRODUCT_QUERIES),
                    ),
                    opt(
                        "price_range",
                        "Price band: an object with min and max (integers).",
                        Gen::Custom(Ty::Dict, price_band),
                    ),
                    def(
                        "sort_by",
                        "Result order.",
                        Gen::Choice(SORT_ORDERS),
                        Lit::Str("relevance"),
                    ),
                    def(
                        "in_stock_only",
                        "Hide items out of stock.",
                        Gen::Bool,
                        Lit::Bool(false),
                    ),
                ],
                templates: &[
                    "search the shop for {keywords}[ {price_range}][ sorted by {sort_by}][{in_stock_only:, in stock only|, including out-of-stock items}]",
                    "find products matching {keywords}[, order by {sort_by}]",
                    "Do you sell {keywords}?[ I'm looking at items {price_range}.][{in_stock_only: Only show what's in stock.| Show everything, even if sold out.}]",
                ],
                rules: &[],
            },
            Func {
                name: "store_order_status",
                description: "Status of an order placed in the shop.",
                params: &[
                    req(
                        "order_id",
                        "The order number.",
                        Gen::Custom(Ty::Str, order_id),
                    ),
                    def(
                        "include_items",
                        "List the items in the order.",
                        Gen::Bool,
                        Lit::Bool(false),
                    ),
                ],
                templates: &[
                    "check the status of order {order_id}[{include_items: and list its items| without listing items}]",
                    "look up order {order_id}[{include_items:, including what's in it|, status only}]",
                    "What's happening with my order {order_id}?[{include_items: Remind me what I ordered.| I don't need the item list.}]",
                ],
                rules: &[],
            },
        ],
    },
    Family {
        name: "music",
        group: "media",
        funcs: &[
            Func {
                name: "playlist_track_add",
                description: "Add a track to one of the user's playlists.",
                params: &[
                    req("playlist", "Name of the playlist.", Gen::Quoted(PLAYLISTS)),
                    req("track", "Title of the track.", Gen::Quoted(SONGS)),
                    opt(
                        "artist",
                        "Artist, to pick the right version.",
                        Gen::Words(ARTISTS),
                    ),
                    opt(
                        "position",
                        "1-based position in the playlist; appended when absent.",
                        Gen::Int(1, 50),
                    ),
                ],
                templates: &[
                    "add {track}[ by {artist}] to my {playlist} playlist[ at position {position}]",
                    "put the song {track} on {playlist}[ (the {artist} version)]",
                    "Please add {track} to the playlist {playlist}.[ It's by {artist}.][ Make it track number {position}.]",
                ],
                rules: &[],
            },
            Func {
                name: "artist_top_tracks_list",
                description: "An artist's most played tracks.",
                params: &[
                    req("artist", "The artist.", Gen::Words(ARTISTS)),
                    def("limit", "How many tracks.", Gen::Int(1, 25), Lit::Int(10)),
                    opt(
                        "market",
                        "Country whose charts to use.",
                        Gen::Words(COUNTRIES),
                    ),
                ],
                templates: &[
                    "list {artist}'s most popular songs[, top {limit}][ in {market}]",
                    "show me the top[ {limit}] tracks by {artist}",
                    "What are {artist}'s biggest hits?[ Give me {limit}.][ Use the charts in {market}.]",
                ],
                rules: &[],
            },
        ],
    },
    Family {
        name: "movies",
        group: "media",
        funcs: &[Func {
            name: "film_showtimes_near",
            description: "Cinema showtimes in a city on a date.",
            params: &[
                req("city", "City of the cinemas.", Gen::Words(CITIES)),
                req("date", "Day of the screening, YYYY-MM-DD.", Gen::Date),
                opt("title", "Only this film.", Gen::Quoted(MOVIES)),
                def(
                    "original_language",
                    "Only screenings in the original language.",
                    Gen::Bool,
                    Lit::Bool(false),
                ),
            ],
            templates: &[
                "find movie showtimes in {city} on {date}[ for {title}][{original_language:, original version only|, dubbed is fine}]",
                "list what's playing in cinemas in {city} on {date}[ — I want to see {title}]",
                "Where can I watch[ {title}] in {city} on {date}?[{original_language: It must be in the original language.| Dubbed versions are OK.}]",
            ],
            rules: &[],
        }],
    },
    Family {
        name: "books",
        group: "media",
        funcs: &[Func {
            name: "library_catalog_lookup",
            description: "Search the public library's catalog for a book.",
            params: &[
                req("title", "Book title.", Gen::Quoted(BOOKS)),
                opt("author", "Author's name.", Gen::Words(PEOPLE)),
                opt("format", "Edition format.", Gen::Choice(BOOK_FORMATS)),
                def(
                    "available_only",
                    "Only copies not on loan.",
                    Gen::Bool,
                    Lit::Bool(false),
                ),
            ],
            templates: &[
                "search the library for {title}[ by {author}][ as {format}][{available_only:, available copies only|, even if all copies are on loan}]",
                "check if the library has {title}[ ({format})]",
                "Does the library have {title}[ by {author}]?[ I'd prefer the {format}.]",
            ],
            rules: &[],
        }],
    },
    Family {
        name: "smart_home",
        group: "home",
        funcs: &[
            Func {
                name: "thermostat_target_set",
                description: "Set a room's target temperature in degrees Celsius.",
                params: &[
                    req("room", "The room.", Gen::Words(ROOMS)),
                    req(
                        "temperature",
                        "Target temperature in °C.",
                        Gen::Float(14.0, 28.0, 1),
                    ),
                    opt("mode", "Operating mode.", Gen::Choice(HVAC_MODES)),
                ],
                templates: &[
                    "set the {room} thermostat to {temperature} °C[ in {mode} mode]",
                    "make the {room} {temperature} degrees[ using {mode} mode]",
                    "Please warm the {room} to {temperature}°C.[ Use the {mode} setting.]",
                ],
                rules: &[],
            },
            Func {
                name: "smart_light_adjust",
                description: "Change the brightness and color of a room's lights.",
                params: &[
                    req("room", "The room.", Gen::Words(ROOMS)),
                    req(
                        "brightness",
                        "Brightness in percent, 0 to 100.",
                        Gen::Int(0, 100),
                    ),
                    opt("color", "Light color.", Gen::Words(LIGHT_COLORS)),
                    opt(
                        "transition_seconds",
                        "Fade time in seconds.",
                        Gen::Int(1, 60),
                    ),
                ],
                templates: &[
                    "set the {room} lights to {brightness}%[ in {color}][ over {transition_seconds} seconds]",
                    "dim the {room} to {brightness} percent[ with the color set to {color}]",
                    "Can you change the lights in the {room} to {brightness}% brightness?[ Make them {color}.][ Fade over {transition_seconds} s.]",
                ],
                rules: &[],
            },
        ],
    },
    Family {
        name: "tasks",
        group: "productivity",
        funcs: &[Func {
            name: "todo_item_add",
            description: "Add a task to the user's to-do list.",
            params: &[
                req("title", "What needs doing.", Gen::Quoted(TASKS)),
                opt("due_date", "Deadline, YYYY-MM-DD.", Gen::Date),
                def(
                    "priority",
                    "Task priority.",
                    Gen::Choice(PRIORITIES),
                    Lit::Str("normal"),
                ),
                opt("tags", "Labels for the task.", Gen::WordList(TAGS, 1, 3)),
            ],
            templates: &[
                "add {title} to my to-do list[, due {due_date}][ with {priority} priority][, tagged {tags}]",
                "create a task {title}[ for {due_date}][ and label it {tags}]",
                "Remind me to do this: {title}.[ The deadline is {due_date}.][ It's {priority} priority.]",
            ],
            rules: &[],
        }],
    },
    Family {
        name: "notes",
        group: "productivity",
        funcs: &[Func {
            name: "notebook_entry_create",
            description: "Create a note in the user's notebook.",
            params: &[
                req("title", "Title of the note.", Gen::Quoted(NOTE_TITLES)),
                req("content", "Text of the note.", Gen::Quoted(NOTE_BODIES)),
                def(
                    "pinned",
                    "Pin the note to the top.",
                    Gen::Bool,
                    Lit::Bool(false),
                ),
            ],
            templates: &[
                "create a note titled {title} with the text {content}[{pinned: and pin it| without pinning it}]",
                "save a note {title} saying {content}[{pinned:, pinned to the top|, not pinned}]",
                "Jot this down under {title}: {content}.[{pinned: Pin it, please.| No need to pin it.}]",
            ],
            rules: &[],
        }],
    },
    Family {
        name: "social",
        group: "messaging",
        funcs: &[Func {
            name: "social_post_schedule",
            description: "Schedule a post on a social network.",
            params: &[
                req("platform", "Where to post.", Gen::Choice(PLATFORMS)),
                req("text", "The post.", Gen::Quoted(POSTS)),
                req("publish_date", "Day to publish, YYYY-MM-DD.", Gen::Date),
                opt(
                    "publish_time",
                    "Time to publish, HH:MM (24-hour).",
                    Gen::Time,
                ),
            ],
            templates: &[
                "schedule {text} on {platform} for {publish_date}[ at {publish_time}]",
                "queue a {platform} post saying {text} to go out on {publish_date}[ at {publish_time}]",
                "Post {text} to {platform} on {publish_date}.[ Time it for {publish_time}.]",
            ],
            rules: &[],
        }],
    },
    Family {
        name: "jobs",
        group: "jobs",
        funcs: &[Func {
            name: "job_postings_search",
            description: "Search open job postings.",
            params: &[
                req("role", "Job title or role.", Gen::Quoted(ROLES)),
                req("location", "City to work in.", Gen::Words(CITIES)),
                def(
                    "remote_only",
                    "Only remote positions.",
                    Gen::Bool,
                    Lit::Bool(false),
                ),
                opt(
                    "min_salary",
                    "Lowest acceptable yearly salary.",
                    Gen::Int(20000, 250000),
                ),
            ],
            templates: &[
                "search for {role} jobs in {location}[{remote_only:, remote only|, on-site or hybrid is fine}][ paying at least {min_salary} a year]",
                "find openings for a {role} around {location}[ with a salary of {min_salary} or more]",
                "Are there any {role} positions in {location}?[{remote_only: I need to work remotely.| I can come to the office.}]",
            ],
            rules: &[],
        }],
    },
    Family {
        name: "events",
        group: "events",
        funcs: &[Func {
            name: "concert_tickets_find",
            description: "Find tickets for an artist's concerts in a city.",
            params: &[
                req("artist", "The performer.", Gen::Words(ARTISTS)),
                req("city", "City of the concert.", Gen::Words(CITIES)),
                opt(
                    "max_price",
                    "Highest price per ticket.",
                    Gen::Float(20.0, 400.0, 0),
                ),
                def(
                    "quantity",
                    "Number of tickets.",
                    Gen::Int(1, 8),
                    Lit::Int(1),
                ),
            ],
            templates: &[
                "find[ {quantity}] tickets for {artist} in {city}[ under {max_price} each]",
                "look for {artist} concert tickets in {city}[, {quantity} of them][, max {max_price} per ticket]",
                "Is {artist} playing in {city}? I'd like tickets.[ We need {quantity}.][ My budget is {max_price} per ticket.]",
            ],
            rules: &[],
        }],
    },
    Family {
        name: "pets",
        group: "pets",
        funcs: &[Func {
            name: "pet_adoption_listings",
            description: "Animals available for adoption from shelters in a city.",
            params: &[
                req("species", "Kind of animal.", Gen::Choice(SPECIES)),
                req("city", "City to search in.", Gen::Words(CITIES)),
                opt(
                    "max_age_years",
                    "Oldest acceptable age in years.",
                    Gen::Int(1, 15),
                ),
                def(
                    "good_with_kids",
                    "Only animals good with children.",
                    Gen::Bool,
                    Lit::Bool(false),
                ),
            ],
            templates: &[
                "find a {species} to adopt in {city}[ no older than {max_age_years} years][{good_with_kids: that is good with kids| (kids don't matter)}]",
                "list adoptable {species}s in {city}[ up to {max_age_years} years old]",
                "I'd like to adopt a {species} in {city}.[ It shouldn't be older than {max_age_years}.][{good_with_kids: We have small children.| No kids at home.}]",
            ],
            rules: &[],
        }],
    },
    Family {
        name: "gardening",
        group: "garden",
        funcs: &[Func {
            name: "plant_watering_schedule",
            description: "How often and how much to water a plant.",
            params: &[
                req("plant", "The plant.", Gen::Words(PLANTS)),
                req("climate", "Local climate.", Gen::Choice(CLIMATES)),
                opt(
                    "pot_diameter_cm",
                    "Pot diameter in centimeters; in the ground when absent.",
                    Gen::Int(8, 60),
                ),
                def(
                    "indoor",
                    "Whether the plant is indoors.",
                    Gen::Bool,
                    Lit::Bool(true),
                ),
            ],
            templates: &[
                "make a watering schedule for a {plant} in a {climate} climate[ in a {pot_diameter_cm} cm pot][{indoor:, kept indoors|, kept outdoors}]",
                "tell me how often to water my {plant} ({climate} climate)[, pot size {pot_diameter_cm} cm]",
                "How much should I water a {plant}? I live in a {climate} climate.[ It sits in a {pot_diameter_cm} cm pot.][{indoor: It's an indoor plant.| It's outside.}]",
            ],
            rules: &[],
        }],
    },
    Family {
        name: "vehicles",
        group: "vehicles",
        funcs: &[Func {
            name: "fuel_trip_cost",
            description: "Fuel or charging cost of a car trip.",
            params: &[
                req(
                    "distance_km",
                    "Trip length in kilometers.",
                    Gen::Float(1.0, 3000.0, 1),
                ),
                req(
                    "consumption_per_100km",
                    "Liters (or kWh) used per 100 km.",
                    Gen::Float(3.0, 25.0, 1),
                ),
                req(
                    "price_per_unit",
                    "Price of a liter (or kWh).",
                    Gen::Float(0.1, 3.0, 2),
                ),
                opt("fuel_type", "Kind of energy.", Gen::Choice(FUEL_TYPES)),
            ],
            templates: &[
                "work out the fuel cost of a {distance_km} km trip at {consumption_per_100km} per 100 km and {price_per_unit} per unit[ for a {fuel_type} car]",
                "estimate what driving {distance_km} km costs if the car uses {consumption_per_100km} per 100 km and energy costs {price_per_unit}[ ({fuel_type})]",
                "My car uses {consumption_per_100km} per 100 km and fuel is {price_per_unit} per liter. What does a {distance_km} km drive cost?[ It runs on {fuel_type}.]",
            ],
            rules: &[],
        }],
    },
];
