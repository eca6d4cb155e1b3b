"""Long member lists of the lexicon's vocabulary concepts (:mod:`router.classify.lexicon`).

Unlike the short concepts there, which group one thing said in many languages, these group the
long tail of a field's vocabulary: a request naming a term the training data never had still
meets the weight the concept learnt from the terms it had. Members are separated by ``|`` and
written as the tokenizer names them: lower case, one word (digits as written; the lexicon folds
them to zeros), a pair of words, or ``c:`` and one or two CJK characters. Written for the project
from the writers' own knowledge, without reading the training or evaluation data (session notes in
docs/classifier.md); only terms that rarely mean anything else are listed.
"""

from __future__ import annotations

# @mathematics: terms of algebra, analysis, number theory, geometry, combinatorics and formal logic that rarely mean anything else
MATHEMATICS: dict[str, str] = {
    "en": (
        "eigenvalues | eigenvector | eigenvectors | eigenspace | eigenspaces | diagonalizable | diagonalize | "
        "invertible | nullspace | orthonormal | hermitian | nilpotent | cofactor | echelon | rref | vector space "
        "| vector spaces | linear transformation | linearly independent | inner product | cross product | "
        "gaussian elimination | homomorphism | homomorphisms | isomorphism | isomorphisms | isomorphic | "
        "automorphism | automorphisms | endomorphism | subgroup | subgroups | abelian | nonabelian | coset | "
        "cosets | quotient | dihedral | sylow | galois | symmetric group | permutation | congruent | congruence | "
        "congruences | modulo | gcd | lcm | hcf | gcf | divisor | divisors | coprime | totient | factorization | "
        "factorisation | factorize | factorise | factorial | factorials | prime number | prime numbers | prime "
        "factorization | composite number | perfect square | irrational number | rational number | rationals | "
        "irrationals | diophantine | quadratic residue | pythagorean | pythagoras | polynomial | polynomials | "
        "quadratic | quadratics | quartic | quintic | binomial | binomials | trinomial | monomial | coefficient | "
        "coefficients | logarithm | logarithms | logarithmic | exponent | exponents | discriminant | asymptote | "
        "asymptotes | parabola | parabolas | hyperbola | conic | conics | absolute value | square root | cube "
        "root | real roots | inverse function | summation | arithmetic progression | geometric progression | "
        "geometric series | telescoping | recurrence relation | antiderivative | antiderivatives | integrand | "
        "integrals | integrable | differentiable | differentiability | partial derivative | partial derivatives | "
        "convergent | divergent | converges | diverges | supremum | infimum | cauchy | riemann | lebesgue | "
        "taylor series | maclaurin | tangent | tangents | secant | cosecant | cotangent | sine | cosine | sines | "
        "cosines | arcsin | arccos | arctan | trigonometric | trigonometry | trig | radian | radians | extrema | "
        "extremum | maxima | minima | concave | concavity | convex | continuous function | differential equation "
        "| differential equations | laplace | fourier | jacobian | laplacian | wronskian | infinitesimal | "
        "isosceles | equilateral | scalene | quadrilateral | quadrilaterals | rhombus | trapezoid | trapezium | "
        "parallelogram | hexagon | octagon | polyhedron | tetrahedron | octahedron | dodecahedron | icosahedron | "
        "circumference | circumcircle | incircle | circumradius | inradius | circumscribed | perpendicular | "
        "bisector | bisects | midpoint | collinear | concyclic | coplanar | centroid | orthocenter | incenter | "
        "circumcenter | right triangle | right angle | triangles | diameter | semicircle | apothem | frustum | "
        "similar triangles | combinatorics | combinatorial | pigeonhole | derangement | derangements | "
        "multinomial | probabilities | expected value | variance | standard deviation | binomial distribution | "
        "random variable | independent events | bernoulli | bayes | hypergeometric | interquartile | bijection | "
        "bijective | injective | surjective | surjection | countably | cardinality | power set | tautology | "
        "tautologies | contrapositive | biconditional | axiom | axioms | corollary | theorem | theorems | "
        "conjecture | mathematical induction | truth table | equivalence relation | iff | homeomorphic | "
        "homeomorphism | homotopy | compactness | metric space | hausdorff | complex number | complex numbers | "
        "imaginary unit | modulus | argand | moivre"
    ),
    "de": (
        "ableitungen | stammfunktion | stammfunktionen | differenzierbar | nullstelle | nullstellen | polynom | "
        "polynome | polynoms | logarithmus | logarithmen | primzahlen | teiler | ggt | kgv | teilerfremd | "
        "kongruenz | kongruent | kathete | katheten | dreiecks | dreiecke | rechtwinklig | rechtwinkligen | "
        "gleichschenklig | gleichschenkliges | gleichseitig | gleichseitiges | parallelogramm | trapez | "
        "flächeninhalt | kosinus | cosinus | tangens | eigenwert | eigenwerte | eigenvektor | eigenvektoren | "
        "determinante | vektorraum | abelsch | abelsche | homomorphismus | isomorphismus | isomorph | bijektiv | "
        "injektiv | surjektiv | bijektion | abzählbar | überabzählbar | konvergent | konvergiert | konvergenz | "
        "grenzwerte | binomialkoeffizient | binomialverteilung | erwartungswert | varianz | standardabweichung | "
        "zufallsvariable | wahrscheinlichkeiten | kombinatorik | permutationen | extremstellen | extrempunkte | "
        "wendestelle | tangente | definitionsbereich | wertebereich | gleichungssystem | gleichungen | "
        "ungleichungen | lösungsmenge | funktionsgleichung | steigung | kurvendiskussion | quadratwurzel | nenner "
        "| bruchrechnung | vollständige induktion | teilmenge | schnittmenge | mengenlehre | winkelhalbierende | "
        "mittelsenkrechte | inkreis | trigonometrie | stochastik | integralrechnung | differentialrechnung | "
        "differentialgleichung | sekante | skalarprodukt | kreuzprodukt | tetraeder | primfaktorzerlegung | "
        "primfaktoren"
    ),
    "fr": (
        "dérivées | dérivable | intégrales | polynôme | polynômes | polynomiale | trinôme | logarithme | "
        "logarithmes | factorielle | diviseur | diviseurs | pgcd | ppcm | congru | congrus | hypoténuse | isocèle "
        "| équilatéral | équilatérale | parallélogramme | losange | trapèze | quadrilatère | périmètre | "
        "circonférence | trigonométrie | trigonométrique | déterminant | valeur propre | valeurs propres | "
        "vecteur propre | vecteurs propres | espace vectoriel | abélien | homomorphisme | isomorphisme | "
        "isomorphe | dénombrable | indénombrable | borne supérieure | convergente | divergente | dénominateur | "
        "numérateur | écart type | binomiale | combinatoire | dénombrement | équations | inéquations | racine "
        "carrée | nombres premiers | récurrence | théorème | théorèmes | corollaire | pythagore | thalès | "
        "médiatrice | bissectrice | orthocentre | barycentre | circonscrit | majorant | minorant | majorée | "
        "minorée | équation différentielle"
    ),
    "es": (
        "derivadas | integrales | antiderivada | polinomio | polinomios | cuadrática | cuadrático | logaritmo | "
        "logaritmos | divisores | mcd | mcm | máximo común | mínimo común | coprimos | congruente | hipotenusa | "
        "cateto | catetos | isósceles | equilátero | escaleno | paralelogramo | rombo | trapecio | cuadrilátero | "
        "perímetro | circunferencia | coseno | trigonometría | trigonométrica | autovalor | autovalores | valores "
        "propios | autovector | espacio vectorial | abeliano | homomorfismo | isomorfismo | isomorfo | biyectiva "
        "| inyectiva | sobreyectiva | biyección | numerable | asíntota | asíntotas | hipérbola | denominador | "
        "numerador | varianza | desviación estándar | combinatoria | ecuaciones | inecuación | inecuaciones | "
        "raíz cuadrada | números primos | teorema | corolario | pitágoras | mediatriz | bisectriz | baricentro | "
        "ortocentro | circuncentro | incentro | fracciones | sucesiones | progresión aritmética | progresión "
        "geométrica"
    ),
    "pt": (
        "integrais | polinômio | polinômios | polinómio | mdc | mmc | losango | trapézio | quadrilátero | "
        "circunferência | cosseno | trigonometria | autovetor | autovetores | espaço vetorial | bijetora | "
        "injetora | sobrejetora | enumerável | assíntota | variância | desvio padrão | combinatória | equações | "
        "inequações | raiz quadrada | corolário | bissetriz | fatorial | fatoração | fatorar | progressão "
        "aritmética | progressão geométrica | derivável | cossecante | cotangente | trinômio | monômio | binômio "
        "| polinomiais | logarítmica | fatoriais | divisível | teoremas | pitagórico | inequação | paralelogramos "
        "| triângulo | triângulos"
    ),
    "it": (
        "derivate | integrali | polinomi | equazioni | disequazione | disequazioni | logaritmi | fattoriale | "
        "divisori | ipotenusa | cateti | isoscele | equilatero | scaleno | parallelogramma | trapezio | "
        "quadrilatero | perimetro | circonferenza | autovalore | autovalori | autovettore | autovettori | spazio "
        "vettoriale | sottogruppo | omomorfismo | biiettiva | iniettiva | suriettiva | biiezione | numerabile | "
        "estremo superiore | asintoto | asintoti | denominatore | numeratore | deviazione standard | radice "
        "quadrata | numeri primi | corollario | pitagora | bisettrice | circocentro | frazioni | progressione "
        "aritmetica | progressione geometrica | derivabile"
    ),
    "nl": (
        "afgeleiden | integralen | veelterm | veeltermen | polynoom | logaritme | delers | priemgetal | "
        "priemgetallen | schuine zijde | gelijkbenige | gelijkzijdige | parallellogram | goniometrie | "
        "eigenwaarde | eigenwaarden | eigenvectoren | bijectie | injectief | surjectief | aftelbaar | asymptoot | "
        "parabool | hyperbool | noemer | variantie | standaardafwijking | kansverdeling | verwachtingswaarde | "
        "vergelijkingen | vierkantswortel | middelloodlijn | hoekpunt | kansrekening | combinatoriek | "
        "differentiaalvergelijking | differentieerbaar | driehoek | driehoeken | rechthoekige driehoek | "
        "kwadratische vergelijking | priemfactoren | priemfactorontbinding | raaklijn"
    ),
    "ru": (
        "производной | производные | производных | первообразная | первообразную | первообразной | интеграла | "
        "интегралы | интегралов | многочлен | многочлена | многочлены | многочленов | полином | полинома | "
        "трехчлен | трёхчлен | логарифм | логарифма | логарифмы | логарифмов | факториал | факториала | делитель "
        "| делители | делителей | делителя | нод | нок | гипотенуза | гипотенузы | гипотенузу | катет | катета | "
        "катеты | равнобедренный | равнобедренного | равносторонний | параллелограмм | параллелограмма | ромб | "
        "ромба | трапеция | трапеции | четырехугольник | четырёхугольник | периметр | периметра | окружность | "
        "окружности | косинус | косинуса | синус | синуса | тангенс | котангенс | тригонометрия | "
        "тригонометрических | биссектриса | биссектрисы | медиана | медианы | определитель | определителя | "
        "собственные значения | собственный вектор | векторное пространство | подгруппа | подгруппы | абелева | "
        "гомоморфизм | изоморфизм | изоморфны | биекция | сюръекция | инъективное | сходимость | асимптота | "
        "асимптоты | парабола | параболы | знаменатель | числитель | дисперсия | матожидание | среднеквадратичное "
        "| комбинаторика | комбинаторики | квадратный корень | теорема | теоремы | теорему | лемма | пифагора | "
        "вписанной | вписанная | дроби | дробей | экстремум | экстремумы | касательная | касательной | "
        "касательную | хорда | хорды | радиус | радиуса | диаметр | простые числа | натуральные числа | "
        "дифференциальное уравнение | дифференциал | интегрирование | бином | биномиальное"
    ),
    "uk": (
        "похідна | похідної | похідну | похідні | похідних | інтеграла | інтеграли | первісна | факторіал | "
        "дільник | дільники | гіпотенуза | рівнобедрений | рівносторонній | паралелограм | трапеція | "
        "тригонометрія | бісектриса | визначник | підгрупа | гомоморфізм | ізоморфізм | бієкція | знаменник | "
        "чисельник | дисперсія | комбінаторика | теореми | піфагора | квадратний корінь | прості числа | дотична "
        "| інтегралу | катети | гіпотенузи | трикутник | трикутника | трикутнику | похідною | первісну | дотичної "
        "| бісектриси | медіана | медіани"
    ),
    "pl": (
        "pochodną | pochodnej | pochodne | całki | całkę | całkowanie | wielomian | wielomianu | wielomiany | "
        "logarytm | logarytmu | silnia | dzielnik | dzielniki | nwd | nww | przeciwprostokątna | "
        "przeciwprostokątnej | przyprostokątna | przyprostokątne | równoramienny | równoboczny | równoległobok | "
        "romb | czworokąt | trygonometria | trygonometryczne | wyznacznik | wartości własne | wektor własny | "
        "podgrupa | homomorfizm | izomorfizm | bijekcja | suriekcja | przeliczalny | zbieżny | zbieżność | "
        "wariancja | odchylenie standardowe | kombinatoryka | równania | równań | pitagorasa | dwusieczna | "
        "symetralna | styczna | stycznej | ciąg arytmetyczny | ciąg geometryczny | trójkąt | trójkąta | trójkącie "
        "| okrąg | prostopadły | prostopadłe"
    ),
    "tr": (
        "türevi | türevini | polinom | polinomun | logaritma | faktöriyel | bölen | bölenleri | ebob | ekok | "
        "aralarında asal | hipotenüs | dik üçgen | üçgen | üçgenin | ikizkenar | eşkenar | paralelkenar | dörtgen "
        "| kosinüs | sinüs | tanjant | trigonometri | özdeğer | özvektör | vektör uzayı | altgrup | homomorfizma "
        "| izomorfizma | asimptot | parabol | hiperbol | payda | varyans | standart sapma | permütasyon | "
        "denklemi | denklemin | denklemler | karekök | asal sayılar | teorem | teoremi | pisagor | açıortay | "
        "kenarortay | çarpanlarına | olasılığı | olasılığını"
    ),
    "id": (
        "suku banyak | faktorial | faktorisasi | fpb | kpk | sisi miring | segitiga | jajargenjang | belah "
        "ketupat | trapesium | segiempat | tangen | determinan | nilai eigen | vektor eigen | subgrup | "
        "homomorfisma | isomorfisma | bijektif | injektif | surjektif | konvergen | divergen | asimtot | penyebut "
        "| pembilang | varians | simpangan baku | kombinatorika | permutasi | pertidaksamaan | akar kuadrat | "
        "garis singgung | deret aritmatika | barisan aritmatika | barisan geometri | aritmatika | aljabar | "
        "kalkulus | diskriminan | integral tentu | koefisien"
    ),
    "vi": (
        "đạo hàm | nguyên hàm | tích phân | đa thức | logarit | giai thừa | ước chung | bội chung | ước số | cạnh "
        "huyền | tam giác | bình hành | hình thang | chu vi | cosin | lượng giác | định thức | trị riêng | vectơ "
        "riêng | nhóm con | đồng cấu | đẳng cấu | song ánh | đơn ánh | toàn ánh | tiệm cận | hyperbol | mẫu số | "
        "tử số | phương sai | lệch chuẩn | chỉnh hợp | hoán vị | bất phương | căn bậc | định lý | pytago | tiếp "
        "tuyến | trung tuyến | phân giác | cấp số | hình học | đại số | giải tích"
    ),
    "ar": (
        "المشتقة | كثيرة الحدود | لوغاريتم | اللوغاريتم | القاسم المشترك | المضاعف المشترك | مثلث | المثلث | قائم "
        "الزاوية | متساوي الساقين | متوازي الأضلاع | شبه منحرف | جيب التمام | حساب المثلثات | القيم الذاتية | "
        "المتجهات الذاتية | الانحراف المعياري | التوافيق | التباديل | توافيق | تباديل | المعادلات | الجذر "
        "التربيعي | الأعداد الأولية | مبرهنة | فيثاغورس | المماس | مماس | القطع المكافئ | الزاوية القائمة | نظرية "
        "فيثاغورس | التكامل المحدد | جيب الزاوية | ظل الزاوية | كثيرات الحدود | اللوغاريتمات | لوغاريتمات | "
        "المعادلة التربيعية | معادلة تربيعية | تربيعية | القطع الزائد | نصف القطر"
    ),
    "hi": (
        "अवकलज | अवकलन | समाकलन | समाकल | बहुपद | लघुगणक | क्रमगुणित | भाजक | गुणनखंड | समापवर्तक | समापवर्त्य | "
        "त्रिभुज | समद्विबाहु | समबाहु | चतुर्भुज | परिमाप | कोज्या | ज्या | त्रिकोणमिति | सारणिक | समाकारिता | "
        "तुल्यकारिता | एकैकी | आच्छादक | अभिसारी | अनंतस्पर्शी | परवलय | अतिपरवलय | प्रसरण | मानक विचलन | क्रमचय "
        "| समीकरण | समीकरणों | असमिका | वर्गमूल | प्रमेय | पाइथागोरस | स्पर्शरेखा | श्रेढ़ी | द्विघात | बीजगणित | "
        "ज्यामिति"
    ),
    "fa": (
        "انتگرال | لگاریتم | فاکتوریل | لوزی | ذوزنقه | چهارضلعی | کسینوس | تانژانت | مثلثات | دترمینان | مقادیر "
        "ویژه | بردار ویژه | همریختی | یکریختی | دوسویی | همگرا | واگرا | مجانب | هذلولی | واریانس | انحراف معیار "
        "| ترکیبیات | جایگشت | معادله | معادلات | نامعادله | اعداد اول | فیثاغورس | حسابان | هندسه | بیضی | "
        "چندضلعی | متساوی الساقین | قائم الزاویه | فیثاغورث | کتانژانت | مثلثاتی | اعداد گویا | اعداد گنگ | عدد "
        "اول"
    ),
    "he": (
        "נגזרת | הנגזרת | אינטגרל | האינטגרל | פולינום | לוגריתם | משולש | המשולש | שווה שוקיים | מקבילית | מעוין "
        "| טרפז | קוסינוס | טנגנס | טריגונומטריה | דטרמיננטה | ערכים עצמיים | וקטור עצמי | הומומורפיזם | "
        "איזומורפיזם | אסימפטוטה | פרבולה | היפרבולה | סטיית תקן | קומבינטוריקה | משוואה | משוואות | שורש ריבועי "
        "| מספרים ראשוניים | פיתגורס | גאומטריה | אלגברה | נגזרות | אינטגרלים | פולינומים | לוגריתמים | משולשים | "
        "ישר זווית | וקטורים עצמיים | מספר ראשוני | הסתברות"
    ),
    "cs": (
        "derivace | derivaci | integrál | integrálu | primitivní funkce | polynomu | logaritmus | faktoriál | "
        "dělitel | dělitelé | nsd | nsn | přepona | odvěsna | odvěsny | trojúhelník | trojúhelníku | rovnoramenný "
        "| rovnostranný | rovnoběžník | kosočtverec | lichoběžník | čtyřúhelník | vlastní čísla | homomorfismus | "
        "izomorfismus | bijekce | konvergentní | směrodatná odchylka | permutace | rovnice | rovnici | nerovnice "
        "| odmocnina | prvočísla | pythagorova | tečna | posloupnost | integrály | logaritmy | trojúhelníky | "
        "odmocniny | rovnic | prvočísel | kombinační číslo | pravoúhlý | pravoúhlého | přepony | goniometrické"
    ),
    "sv": (
        "derivatan | primitiv funktion | logaritm | logaritmen | hypotenusan | katet | kateten | triangel | "
        "triangeln | likbent | liksidig | parallelltrapets | omkrets | determinanten | egenvärde | egenvärden | "
        "egenvektor | egenvektorer | delgrupp | asymptot | nämnare | täljare | standardavvikelse | ekvation | "
        "ekvationen | ekvationer | kvadratrot | kvadratroten | sannolikhet | sannolikheten | talföljd | derivator "
        "| integraler | polynomet | polynomen | andragradsekvation | logaritmer | egenvärdena | primtalen | "
        "hypotenusa"
    ),
    "ja": (
        "c:導関 | c:定積 | c:偏微 | c:多項 | c:対数 | c:階乗 | c:公倍 | c:斜辺 | c:直角 | c:等辺 | c:正三 | c:台形 | c:菱形 | c:円周 | c:余弦 | "
        "c:正弦 | c:正接 | c:弧度 | c:群論 | c:準同 | c:全単 | c:単射 | c:全射 | c:漸近 | c:放物 | c:双曲 | c:待値 | c:順列 | c:階差 | c:等差 | "
        "c:等比 | c:根号 | c:方根 | c:定理 | c:補題 | c:三平 | c:接線 | c:垂線 | c:内接 | c:外接 | c:外心 | c:垂心 | c:素因 | c:因数 | c:既約 | "
        "c:漸化 | c:帰納 | c:命題 | c:対偶 | c:写像 | c:虚数 | c:複素 | c:実数 | c:約分 | c:通分 | c:図形 | c:扇形 | c:弧長 | c:体積 | c:円錐 | "
        "c:角錐 | c:直方 | c:数学 | c:算数 | c:幾何 | c:代数 | c:微積 | c:二項"
    ),
    "ko": (
        "c:도함 | c:편미 | c:다항 | c:공배 | c:빗변 | c:직각 | c:등변 | c:정삼 | c:마름 | c:코사 | c:탄젠 | c:분군 | c:군론 | c:아벨 | c:준동 | "
        "c:단사 | c:점근 | c:포물 | c:쌍곡 | c:기댓 | c:이항 | c:등차 | c:등비 | c:제곱 | c:근호 | c:곱근 | c:피타 | c:접선 | c:내접 | c:외접 | "
        "c:외심 | c:귀납 | c:명제 | c:허수 | c:복소 | c:약분 | c:통분 | c:도형 | c:닮음 | c:채꼴 | c:부피 | c:원뿔 | c:각뿔 | c:직육 | c:수학 | "
        "c:산수 | c:항등 | c:꼭짓 | c:대각"
    ),
    "zh": (
        "c:求导 | c:导函 | c:偏导 | c:原函 | c:定积 | c:对数 | c:對數 | c:阶乘 | c:階乘 | c:互质 | c:互素 | c:互質 | c:因式 | c:同余 | c:斜边 | "
        "c:斜邊 | c:等腰 | c:等边 | c:等邊 | c:梯形 | c:四边 | c:周长 | c:圆周 | c:餘弦 | c:正切 | c:余切 | c:征值 | c:子群 | c:群论 | c:阿贝 | "
        "c:同态 | c:同构 | c:双射 | c:單射 | c:单射 | c:满射 | c:上确 | c:下确 | c:渐近 | c:抛物 | c:拋物 | c:雙曲 | c:方差 | c:准差 | c:望值 | "
        "c:二项 | c:开方 | c:引理 | c:勾股 | c:切线 | c:垂线 | c:内切 | c:质因 | c:質因 | c:逆否 | c:充要 | c:实数 | c:约分 | c:联立 | c:弧长 | "
        "c:体积 | c:圆锥 | c:棱锥 | c:棱柱 | c:算术 | c:几何 | c:微积 | c:多边"
    ),
}

